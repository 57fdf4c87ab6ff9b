"""The seed article's Lambda authorizer, ``handler`` and ``build_policy`` copied verbatim.

The gateway must run it unchanged as ``[auth] type = "authorizer"`` with the identity source
``route.request.header.Authorization`` and ``tenant_key = "practice_id"``. It lives in
tests/, not in handlers/ (the shipped examples): the verbatim code has no type annotations, so
it cannot pass ``mypy --strict``, which checks handlers/. What the article leaves undefined
(``jwt``, ``PUBLIC_KEY``, ``is_subscription_active``) is defined above the copy: a key pair
made at import (the tests sign tokens with ``PRIVATE_KEY``) and a set of active practices.
"""

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_KEY = PRIVATE_KEY.public_key()
ACTIVE_PRACTICES = {"practice-1", "practice-2"}


def is_subscription_active(practice_id):
    return practice_id in ACTIVE_PRACTICES


# ---- verbatim from the seed article, from here to the end of the file

# Lambda Authoriser — custom auth logic
def handler(event, context):
    token = event['authorizationToken'].replace('Bearer ', '')

    try:
        payload = jwt.decode(token, PUBLIC_KEY, algorithms=['RS256'])

        # Custom check: is this practice's subscription active?
        practice_id = payload['custom:practice_id']
        if not is_subscription_active(practice_id):
            raise Exception('Unauthorized')  # returns 403

        # Return Allow policy with context — passed to downstream Lambda
        return build_policy(
            principal_id=payload['sub'],
            effect='Allow',
            resource=event['methodArn'],
            context={
                'practice_id': practice_id,
                'role': payload['custom:role']
            }
        )

    except jwt.ExpiredSignatureError:
        raise Exception('Unauthorized')  # 401
    except Exception:
        raise Exception('Unauthorized')  # 401


def build_policy(principal_id, effect, resource, context):
    return {
        'principalId': principal_id,
        'policyDocument': {
            'Version': '2012-10-17',
            'Statement': [{'Action': 'execute-api:Invoke', 'Effect': effect, 'Resource': resource}]
        },
        'context': context
    }
