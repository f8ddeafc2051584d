# Sourced by the benchmark scripts: starts cfssl `serve` (Debian golang-cfssl) on a free
# loopback port with a fresh P-256 CA made by openssl, exports CFSSL_URL, and stops it on exit.
start_cfssl() {
  if ! command -v cfssl >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-cfssl >/dev/null
  fi
  cfssl_dir=$(mktemp -d)
  openssl ecparam -name prime256v1 -genkey -noout -out "$cfssl_dir/ca-key.pem"
  openssl req -x509 -new -key "$cfssl_dir/ca-key.pem" -subj "/CN=cfssl bench CA" -days 30 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$cfssl_dir/ca.pem" 2>/dev/null
  echo '{"signing": {"default": {"expiry": "8760h", "usages": ["digital signature", "client auth"]}}}' \
    >"$cfssl_dir/config.json"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cfssl serve -address 127.0.0.1 -port "$port" -ca "$cfssl_dir/ca.pem" \
    -ca-key "$cfssl_dir/ca-key.pem" -config "$cfssl_dir/config.json" >"$cfssl_dir/log" 2>&1 &
  cfssl_pid=$!
  trap 'kill "$cfssl_pid" 2>/dev/null || true; rm -rf "$cfssl_dir"' EXIT
  for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$port/api/v1/cfssl/info" -d '{}' && break
    sleep 0.1
  done
  export CFSSL_URL="http://127.0.0.1:$port"
}
