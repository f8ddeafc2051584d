"""AWS IoT fleet provisioning clients against provisiond's MQTT endpoint.

usage:
  aws_fleet.py session <host> <port> <ca_chain.pem> <cert.pem> <key.pem> [client_id]
      A paho-mqtt 1.x client with a claim certificate, driven line by line: prints {"rc": n} once
      connected (or refused), then reads one JSON action per stdin line and prints one JSON
      result line each. Payloads are JSON or CBOR (cbor2) as the action says.
        {"op": "sub", "filters": [...]}                 -> {"granted": [...]} | {"disconnected": true}
        {"op": "req", "topic": t, "format": "json"|"cbor", "body": obj | null}
                                                        -> {"topic": reply topic, "body": decoded}
                                                           | {"disconnected": true} | {"timeout": true}
        {"op": "pub", "topic": t, "payload": "text"}    -> {"disconnected": bool} after 2 s
        {"op": "messages"}                              -> {"topics": [every topic received]}
        {"op": "close"}                                 -> {"closed": true}
  aws_fleet.py sdk <host> <port> <ca_chain.pem> <cert.pem> <key.pem> <template> <csr|keys>
                   <serial> <out_dir> [csr.pem]
      The AWS IoT Device SDK v2 (awsiotsdk `IotIdentityClient` over an awscrt MQTT 3.1.1
      connection): CreateCertificateFromCsr or CreateKeysAndCertificate, then RegisterThing
      with {"SerialNumber": serial}. Writes out_dir/device.pem (and device.key for `keys`) and
      prints {"certificateId", "thingName", "deviceConfiguration", "held": {...}} where "held"
      is whatever the test reads between the two steps (see `hold_file`).
"""
import json
import os
import queue
import sys
import time


def session(host, port, chain, cert, key, client_id="claim-device"):
    import ssl

    import cbor2
    import paho.mqtt.client as mqtt

    ctx = ssl.create_default_context(cafile=chain)
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    c = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    c.tls_set_context(ctx)
    events = queue.Queue()
    state = {"topics": [], "disconnected": False}

    def on_connect(_c, _u, _f, rc):
        events.put(("connect", rc))

    def on_disconnect(_c, _u, rc):
        state["disconnected"] = True
        events.put(("disconnect", rc))

    def on_subscribe(_c, _u, mid, granted):
        events.put(("suback", list(granted)))

    def on_message(_c, _u, msg):
        state["topics"].append(msg.topic)
        events.put(("message", (msg.topic, msg.payload)))

    c.on_connect, c.on_disconnect = on_connect, on_disconnect
    c.on_subscribe, c.on_message = on_subscribe, on_message
    c.connect(host, int(port), keepalive=30)
    c.loop_start()

    def wait(kinds, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                kind, value = events.get(timeout=max(0.05, deadline - time.time()))
            except queue.Empty:
                break
            if kind in kinds:
                return kind, value
        return None, None

    kind, rc = wait({"connect", "disconnect"}, 10)
    print(json.dumps({"rc": rc if kind == "connect" else None}), flush=True)
    if kind != "connect" or rc != 0:
        c.loop_stop()
        return

    for line in sys.stdin:
        action = json.loads(line)
        op = action["op"]
        if op == "sub":
            if state["disconnected"]:
                print(json.dumps({"disconnected": True}), flush=True)
                continue
            c.subscribe([(f, 1) for f in action["filters"]])
            kind, value = wait({"suback", "disconnect"}, 5)
            print(json.dumps({"granted": value} if kind == "suback" else {"disconnected": True}), flush=True)
        elif op == "req":
            body = action.get("body")
            if action["format"] == "cbor":
                payload = b"" if body is None else cbor2.dumps(body)
            else:
                payload = b"" if body is None else json.dumps(body).encode()
            c.publish(action["topic"], payload, qos=1)
            kind, value = wait({"message", "disconnect"}, 15)
            if kind == "message":
                topic, raw = value
                decoded = cbor2.loads(raw) if action["format"] == "cbor" else json.loads(raw)
                print(json.dumps({"topic": topic, "body": decoded}), flush=True)
            elif kind == "disconnect":
                print(json.dumps({"disconnected": True}), flush=True)
            else:
                print(json.dumps({"timeout": True}), flush=True)
        elif op == "pub":
            c.publish(action["topic"], action.get("payload", "").encode(), qos=1)
            kind, _ = wait({"disconnect"}, 2)
            print(json.dumps({"disconnected": state["disconnected"]}), flush=True)
        elif op == "messages":
            print(json.dumps({"topics": state["topics"]}), flush=True)
        elif op == "close":
            c.disconnect()
            c.loop_stop()
            print(json.dumps({"closed": True}), flush=True)
            return


def sdk(host, port, chain, cert, key, template, mode, serial, out_dir, csr_path=None):
    from awscrt import mqtt
    from awsiot import iotidentity, mqtt_connection_builder

    conn = mqtt_connection_builder.mtls_from_path(
        endpoint=host,
        port=int(port),
        cert_filepath=cert,
        pri_key_filepath=key,
        ca_filepath=chain,
        client_id="fleet-sdk-%d" % os.getpid(),
        clean_session=True,
        keep_alive_secs=30,
    )
    conn.connect().result(15)
    identity = iotidentity.IotIdentityClient(conn)
    answers = queue.Queue()

    def accepted(response):
        answers.put(("accepted", response))

    def rejected(error):
        answers.put(("rejected", error))

    if mode == "csr":
        req = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
        f, _ = identity.subscribe_to_create_certificate_from_csr_accepted(req, mqtt.QoS.AT_LEAST_ONCE, accepted)
        f.result(10)
        f, _ = identity.subscribe_to_create_certificate_from_csr_rejected(req, mqtt.QoS.AT_LEAST_ONCE, rejected)
        f.result(10)
        csr = open(csr_path).read()
        identity.publish_create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr),
            mqtt.QoS.AT_LEAST_ONCE,
        ).result(10)
    else:
        req = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
        f, _ = identity.subscribe_to_create_keys_and_certificate_accepted(req, mqtt.QoS.AT_LEAST_ONCE, accepted)
        f.result(10)
        f, _ = identity.subscribe_to_create_keys_and_certificate_rejected(req, mqtt.QoS.AT_LEAST_ONCE, rejected)
        f.result(10)
        identity.publish_create_keys_and_certificate(
            iotidentity.CreateKeysAndCertificateRequest(), mqtt.QoS.AT_LEAST_ONCE
        ).result(10)
    kind, created = answers.get(timeout=15)
    if kind != "accepted":
        raise SystemExit("create rejected: %s %s %s" % (created.status_code, created.error_code, created.error_message))
    with open(os.path.join(out_dir, "device.pem"), "w") as f:
        f.write(created.certificate_pem)
    if mode == "keys":
        with open(os.path.join(out_dir, "device.key"), "w") as f:
            f.write(created.private_key)
    # The test inspects the held certificate (OCSP, CRL, registry) before RegisterThing.
    print(json.dumps({"certificateId": created.certificate_id}), flush=True)
    sys.stdin.readline()

    reg = iotidentity.RegisterThingSubscriptionRequest(template_name=template)
    f, _ = identity.subscribe_to_register_thing_accepted(reg, mqtt.QoS.AT_LEAST_ONCE, accepted)
    f.result(10)
    f, _ = identity.subscribe_to_register_thing_rejected(reg, mqtt.QoS.AT_LEAST_ONCE, rejected)
    f.result(10)
    identity.publish_register_thing(
        iotidentity.RegisterThingRequest(
            template_name=template,
            certificate_ownership_token=created.certificate_ownership_token,
            parameters={"SerialNumber": serial},
        ),
        mqtt.QoS.AT_LEAST_ONCE,
    ).result(10)
    kind, thing = answers.get(timeout=15)
    if kind != "accepted":
        raise SystemExit("register rejected: %s %s %s" % (thing.status_code, thing.error_code, thing.error_message))
    conn.disconnect().result(10)
    print(json.dumps({"thingName": thing.thing_name, "deviceConfiguration": thing.device_configuration}), flush=True)


def main():
    case = sys.argv[1]
    if case == "session":
        session(*sys.argv[2:])
    elif case == "sdk":
        sdk(*sys.argv[2:])
    else:
        raise SystemExit("unknown case " + case)


main()
