#!/usr/bin/env bash
# Generate what the secure topology needs, for local testing and as a template:
#   <out>/ca.crt, ca.key            a local certificate authority (keep ca.key private)
#   <out>/server.pem, server.key    the SuperLink's TLS certificate, signed by that CA
#   <out>/supernode-<i>, .pub       one ECDSA P-384 key pair per SuperNode (authentication)
#
# Usage: scripts/gen_certs.sh [OUT_DIR=certificates] [NUM_SUPERNODES=3]
# The server certificate is valid for localhost, 127.0.0.1, ::1 and "superlink" (the
# Docker Compose service name). A SuperLink reached under another name or address
# needs it in the certificate: EXTRA_SANS="DNS:fl.example.org,IP:10.0.0.5" scripts/gen_certs.sh
# Real deployments use their organisation's CA; never reuse these files in production.
set -euo pipefail

out="${1:-certificates}"
num_supernodes="${2:-3}"
days="${CERT_DAYS:-365}"
sans="DNS:localhost,DNS:superlink,IP:127.0.0.1,IP:::1${EXTRA_SANS:+,$EXTRA_SANS}"

mkdir -p "$out"
cd "$out"

# Certificate authority
openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days "$days" \
  -keyout ca.key -out ca.crt -subj "/O=fedvq/CN=fedvq local CA" 2>/dev/null

# SuperLink certificate (Fleet, Control and Runtime APIs share it in Flower 1.41)
cat > server.cnf <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
O = fedvq
CN = superlink
[ext]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $sans
CNF
openssl req -new -newkey rsa:2048 -sha256 -nodes -keyout server.key -out server.csr -config server.cnf 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
  -extfile server.cnf -extensions ext -out server.pem 2>/dev/null
rm -f server.csr server.cnf ca.srl
chmod 600 ca.key server.key

# SuperNode authentication keys (OpenSSH format, NIST P-384: what `flwr supernode register` takes)
for i in $(seq 1 "$num_supernodes"); do
  key="supernode-$i"
  rm -f "$key" "$key.pub"
  if command -v ssh-keygen >/dev/null 2>&1; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "$key" -f "$key"
  else  # the cryptography package ships with flwr
    python - "$key" <<'PY'
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

name = sys.argv[1]
key = ec.generate_private_key(ec.SECP384R1())
private = key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
)
public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
open(name, "wb").write(private)
open(name + ".pub", "wb").write(public + b" " + name.encode() + b"\n")
PY
    chmod 600 "$key"
  fi
done

echo "wrote CA, SuperLink certificate ($sans) and $num_supernodes SuperNode key pairs to $(pwd)"
