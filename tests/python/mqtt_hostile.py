"""Hostile and raw MQTT clients against provisiond's MQTT endpoint (paho-mqtt 1.x and raw TLS).

usage: mqtt_hostile.py <case> <host> <port> <ca_chain.pem> [args…]
Cases print one JSON object on stdout:
  raw <hex bytes>                       send bytes after TLS; {"reply": hex, "closed": bool}
  connect <client_id> <username> <password>  CONNECT only; {"rc": int}
  snoop <seconds> <filter>…             subscribe anonymously / as nobody; {"rc", "suback", "messages", "disconnected"}
  dps_foreign <client_id> <username> <password> <subscribe|publish> <topic>
                                        authenticated DPS client breaks the topic rule; {"suback", "disconnected", "messages"}
  dps_later <client_id> <username> <password> <seconds>
                                        connect and subscribe, wait <seconds>, then register;
                                        {"rc", "suback", "messages", "disconnected"}
"""
import json
import socket
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt


def tls_context(chain):
    ctx = ssl.create_default_context(cafile=chain)
    ctx.check_hostname = False
    return ctx


def raw(host, port, chain, hexbytes):
    sock = tls_context(chain).wrap_socket(socket.create_connection((host, int(port)), timeout=5))
    sock.sendall(bytes.fromhex(hexbytes))
    sock.settimeout(5)
    reply, closed = b"", False
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                closed = True
                break
            reply += chunk
    except (socket.timeout, TimeoutError):
        pass
    except (ConnectionResetError, ssl.SSLError, OSError):
        closed = True
    return {"reply": reply.hex(), "closed": closed}


def client(host, port, chain, client_id, username=None, password=None):
    c = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    c.tls_set_context(tls_context(chain))
    if username is not None:
        c.username_pw_set(username, password or None)
    state = {"rc": None, "suback": [], "messages": [], "disconnected": False}
    done = threading.Event()

    def on_connect(_c, _u, _f, rc):
        # the first CONNACK (paho reconnects by itself after a close)
        if state["rc"] is None:
            state["rc"] = rc
        done.set()

    def on_disconnect(_c, _u, rc):
        state["disconnected"] = True
        done.set()

    def on_subscribe(_c, _u, mid, granted):
        state["suback"].append(list(granted))

    def on_message(_c, _u, msg):
        state["messages"].append(msg.topic)

    c.on_connect, c.on_disconnect, c.on_subscribe, c.on_message = on_connect, on_disconnect, on_subscribe, on_message
    c.connect(host, int(port), keepalive=30)
    c.loop_start()
    done.wait(10)
    return c, state


def main():
    case, host, port, chain = sys.argv[1:5]
    args = sys.argv[5:]
    if case == "raw":
        print(json.dumps(raw(host, port, chain, args[0])))
    elif case == "connect":
        c, state = client(host, port, chain, args[0], args[1], args[2])
        c.loop_stop()
        print(json.dumps({"rc": state["rc"]}))
    elif case == "snoop":
        seconds, filters = float(args[0]), args[1:]
        c, state = client(host, port, chain, "snooper")
        if state["rc"] == 0:
            for f in filters:
                c.subscribe(f, qos=1)
        time.sleep(seconds)
        c.loop_stop()
        print(json.dumps(state))
    elif case == "dps_foreign":
        client_id, username, password, action, topic = args
        c, state = client(host, port, chain, client_id, username, password)
        if state["rc"] == 0:
            if action == "subscribe":
                c.subscribe(topic, qos=1)
            else:
                c.publish(topic, b"{}", qos=1)
            time.sleep(2)
        c.loop_stop()
        print(json.dumps(state))
    elif case == "dps_later":
        client_id, username, password, seconds = args
        c, state = client(host, port, chain, client_id, username, password)
        if state["rc"] == 0:
            c.subscribe("$dps/registrations/res/#", qos=1)
            time.sleep(float(seconds))
            c.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", b"{}", qos=1)
            time.sleep(3)
        c.loop_stop()
        print(json.dumps(state))


main()
