#!/usr/bin/env bash
# Make the certificates for podflow's optional TLS without cert-manager, with openssl only:
# a CA, one server certificate shared by every agent, and a client certificate for
# `podflow tui` / `podflow observe` (needed when tls.requireClientCert is true, the default).
#
#   deploy/make-certs.sh DIR [NAMESPACE] [SERVICE] [DAYS]
#   kubectl -n podflow create secret generic podflow-agent-tls \
#     --from-file=DIR/tls.crt --from-file=DIR/tls.key --from-file=DIR/ca.crt
#   helm upgrade --install podflow deploy/helm/podflow -n podflow --set tls.enabled=true
#   podflow tui --kubernetes --tls-ca DIR/ca.crt --tls-cert DIR/client.crt \
#     --tls-key DIR/client.key --tls-server-name SERVICE.NAMESPACE.svc
#
# Clients reach agents at node IPs (or through port-forward), so they verify the one name
# SERVICE.NAMESPACE.svc (--tls-server-name) rather than the address they dial.
set -euo pipefail

dir=${1:?usage: make-certs.sh DIR [NAMESPACE] [SERVICE] [DAYS]}
ns=${2:-podflow}
svc=${3:-podflow-agent}
days=${4:-365}
name="$svc.$ns.svc"
mkdir -p "$dir"
cd "$dir"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=podflow CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

sign() {  # sign NAME CN EXTENSIONS
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
    -days "$days" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
sign tls "$name" "subjectAltName=DNS:$name,DNS:*.$name
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"
sign client "podflow-client" "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
rm -f ca.srl
chmod 0644 ca.crt tls.crt client.crt
echo "made $dir/{ca,tls,client}.{crt,key} for $name (valid $days days); keep ca.key offline"
