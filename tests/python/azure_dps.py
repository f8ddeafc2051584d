"""Registers one device against provisiond with Azure's own Python device SDK (azure-iot-device),
which provisions only over MQTT on port 8883.

usage: azure_dps.py symkey <host> <id_scope> <registration_id> <key_base64> <ca_chain.pem>
       azure_dps.py x509   <host> <id_scope> <registration_id> <cert.pem> <key.pem> <ca_chain.pem>
Prints the registration result as JSON; exits 1 with the error on failure.
"""
import json
import sys

from azure.iot.device import ProvisioningDeviceClient, X509


def main():
    mode, host, scope, rid = sys.argv[1:5]
    if mode == "symkey":
        key, chain = sys.argv[5:7]
        client = ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=host, registration_id=rid, id_scope=scope, symmetric_key=key,
            server_verification_cert=open(chain).read())
    else:
        cert, key, chain = sys.argv[5:8]
        client = ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=host, registration_id=rid, id_scope=scope,
            x509=X509(cert_file=cert, key_file=key), server_verification_cert=open(chain).read())
    client.provisioning_payload = {"source": "azure-iot-device"}
    try:
        result = client.register()
    except Exception as e:  # the SDK's errors: refused connections, timeouts
        print(json.dumps({"error": repr(e)}), file=sys.stderr)
        sys.exit(1)
    state = result.registration_state
    print(json.dumps({
        "status": result.status,
        "operationId": result.operation_id,
        "deviceId": state.device_id if state else None,
        "assignedHub": state.assigned_hub if state else None,
        "payload": state.response_payload if state else None,
    }))


main()
