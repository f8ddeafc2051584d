// Registers one device against provisiond with Azure's own device SDK (HTTP transport, or MQTT
// on port 8883 when TRANSPORT=mqtt).
// usage: node register.js symkey <host:port> <idScope> <registrationId> <derivedKeyBase64>
//        node register.js x509   <host:port> <idScope> <registrationId> <cert.pem> <key.pem>
// Trust: NODE_EXTRA_CA_CERTS must point at provisiond's CA chain. Prints the registration
// result as JSON on success; exits 1 with the error on failure.
'use strict';
const fs = require('fs');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { Mqtt } = require('azure-iot-provisioning-device-mqtt');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { X509Security } = require('azure-iot-security-x509');

const [mode, host, scope, registrationId, a, b] = process.argv.slice(2);
const security = mode === 'symkey'
  ? new SymmetricKeySecurityClient(registrationId, a)
  : new X509Security(registrationId, { cert: fs.readFileSync(a, 'utf8'), key: fs.readFileSync(b, 'utf8') });
const client = ProvisioningDeviceClient.create(
  host, scope, process.env.TRANSPORT === 'mqtt' ? new Mqtt() : new Http(), security);
client.setProvisioningPayload({ source: 'azure-iot-provisioning-device' });
client.register((err, result) => {
  if (err) {
    console.error(JSON.stringify({ error: String(err && err.message), name: err && err.name }));
    process.exit(1);
  }
  console.log(JSON.stringify(result));
  process.exit(0);
});
