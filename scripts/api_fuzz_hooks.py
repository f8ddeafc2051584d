"""schemathesis hooks for scripts/api-fuzz: send generated bodies of provisiond's binary media
types (PKCS#10 for EST, DER OCSP requests) as raw bytes."""
import schemathesis
from schemathesis.transport.serialization import serialize_binary


@schemathesis.serializer("application/pkcs10", "application/ocsp-request")
def binary(ctx, value):
    return serialize_binary(value)
