"""Lambda-proxy event shapes, built without sockets (aws-websocket-api.md §2.6)."""

from wsgateway import events
from wsgateway.records import ConnectionRecord

RECORD = ConnectionRecord(
    connection_id="R1kmxc2VNjMCFIA=",
    node_id="n1",
    tenant="practice-7",
    principal_id="user-1",
    connected_at=1705751697.419,
    source_ip="49.105.91.154",
    user_agent="Mozilla/5.0",
    authorizer={"principalId": "user-1", "tenant": "practice-7", "role": "staff"},
    domain_name="gw.example.com",
)


def base():
    return events.context_base(RECORD, stage="prod", api_id="abc123")


def test_context_base_is_fixed_per_connection():
    assert base() == {
        "stage": "prod",
        "domainName": "gw.example.com",
        "apiId": "abc123",
        "connectionId": "R1kmxc2VNjMCFIA=",
        "connectedAt": 1705751697419,
        "identity": {"sourceIp": "49.105.91.154", "userAgent": "Mozilla/5.0"},
        "authorizer": {"principalId": "user-1", "tenant": "practice-7", "role": "staff"},
    }


def test_message_event_matches_aws_capture():
    event = events.message_event(events.message_context(base()), route_key="$default", body="hi", is_base64=False,
                                 request_id="R1knPH17NjMFftw=", epoch_ms=1705751700453)
    ctx = event["requestContext"]
    assert event["body"] == "hi" and event["isBase64Encoded"] is False
    assert set(event) == {"requestContext", "body", "isBase64Encoded"}
    assert ctx["routeKey"] == "$default" and ctx["eventType"] == "MESSAGE"
    assert ctx["messageId"] == ctx["requestId"] == ctx["extendedRequestId"] == "R1knPH17NjMFftw="
    assert ctx["requestTime"] == "20/Jan/2024:11:55:00 +0000"
    assert ctx["requestTimeEpoch"] == 1705751700453
    assert ctx["messageDirection"] == "IN"


def test_connect_event_has_headers_and_query_only_when_present():
    event = events.connect_event(base(), headers=[("Host", "h"), ("X-A", "1"), ("X-A", "2")], query=[],
                                 request_id="r", epoch_s=1.0)
    assert event["headers"] == {"Host": "h", "X-A": "2"}
    assert event["multiValueHeaders"] == {"Host": ["h"], "X-A": ["1", "2"]}
    assert "queryStringParameters" not in event and "messageId" not in event["requestContext"]
    event = events.connect_event(base(), headers=[], query=[("a", "1"), ("a", "2")], request_id="r", epoch_s=1.0)
    assert event["queryStringParameters"] == {"a": "2"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"]}


def test_disconnect_event_minimal_headers_and_code():
    event = events.disconnect_event(base(), code=1001, reason="", request_id="r", epoch_s=1.0)
    ctx = event["requestContext"]
    assert ctx["disconnectStatusCode"] == 1001 and ctx["disconnectReason"] == ""
    assert ctx["eventType"] == "DISCONNECT" and ctx["routeKey"] == "$disconnect"
    assert event["headers"] == {"Host": "gw.example.com", "x-api-key": "", "X-Forwarded-For": "49.105.91.154", "x-restapi": ""}
    assert "body" not in event


def test_a_handler_editing_its_event_cannot_change_the_next():
    b = events.message_context(base())
    first = events.message_event(b, route_key="k", body="", is_base64=False, request_id="r", epoch_ms=1000)
    first["requestContext"]["authorizer"]["role"] = "admin"
    first["requestContext"]["identity"]["sourceIp"] = "6.6.6.6"
    second = events.message_event(b, route_key="k", body="", is_base64=False, request_id="r", epoch_ms=1000)
    assert second["requestContext"]["authorizer"]["role"] == "staff"
    assert second["requestContext"]["identity"]["sourceIp"] == "49.105.91.154"


def test_message_events_of_one_connection_share_nothing_a_handler_can_edit():
    """Each event is a fresh copy of the connection's message_context: its fields in AWS's
    order, this message's values, nothing shared with the template, the base or another event."""
    b = base()
    template = events.message_context(b)
    first = events.message_event(template, "k", "a", False, "r1", 1705751700453)
    second = events.message_event(template, "k", "b", False, "r2", 1705751701000)
    ctx = first["requestContext"]
    assert list(ctx) == [*b, "routeKey", "eventType", "requestId", "extendedRequestId", "requestTime",
                         "requestTimeEpoch", "messageDirection", "messageId"]
    assert {k: ctx[k] for k in b} == b
    assert ctx["requestId"] == "r1" and second["requestContext"]["requestId"] == "r2"
    assert second["requestContext"]["requestTime"] == "20/Jan/2024:11:55:01 +0000"
    assert template["requestId"] == "" and template["identity"] is b["identity"]
    assert template["authorizer"] == b["authorizer"] and template["authorizer"] is not RECORD.authorizer
    for name in ("identity", "authorizer"):
        assert ctx[name] is not second["requestContext"][name] and ctx[name] is not b[name]
        assert ctx[name] is not RECORD.authorizer
    first["requestContext"]["routeKey"] = "changed"
    assert events.message_event(template, "k", "", False, "r", 1000)["requestContext"]["routeKey"] == "k"
