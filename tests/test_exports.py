"""The public surface: what handlers import, and AWS's error shapes."""

import wsgateway
from wsgateway import errors


def test_package_exports():
    for name in wsgateway.__all__:
        assert hasattr(wsgateway, name)
    assert issubclass(wsgateway.GoneError, wsgateway.GatewayError)


def test_error_types_match_aws_shapes():
    expected = {
        errors.BadRequestError: (400, "BadRequestException"),
        errors.ForbiddenError: (403, "ForbiddenException"),
        errors.SignatureError: (403, "ForbiddenException"),
        errors.NotFoundError: (404, "NotFoundException"),
        errors.GoneError: (410, "GoneException"),
        errors.PayloadTooLargeError: (413, "PayloadTooLargeException"),
        errors.LimitExceededError: (429, "LimitExceededException"),
        errors.RegistryUnavailableError: (503, "ServiceUnavailableException"),
    }
    for cls, (status, error_type) in expected.items():
        assert (cls.status, cls.error_type) == (status, error_type)
    assert errors.GoneError.send_message is False  # AWS sends 410 with an empty body


def test_config_error_names_the_key():
    exc = errors.ConfigError("listen.port", "must be an integer")
    assert str(exc) == "listen.port: must be an integer" and exc.key == "listen.port"


def test_disconnect_reason_none_is_empty():
    assert errors.Disconnect(1000, None).reason == ""  # type: ignore[arg-type]
    assert errors.Disconnect(4000).reason == "" and errors.Disconnect(4000, "bye").reason == "bye"
