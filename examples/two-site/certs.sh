#!/bin/sh
# Certificate recipe for the two-site fabric: a private CA and the XMPP server's certificate
# (for fabric.example.com and its components, e.g. pubsub.fabric.example.com).
#   sh certs.sh certs          -> certs/ca.pem (give it to every member: [statebus] ca_file)
#                                 certs/fabric.example.com.{crt,key,pem} (the XMPP server's)
# Use your own domain instead of fabric.example.com (and in every *.toml and xmpp/* file).
set -eu
out=${1:-certs}
domain=${DOMAIN:-fabric.example.com}
mkdir -p "$out"
# 1. The CA (keep ca.key offline).
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
  -keyout "$out/ca.key" -out "$out/ca.pem" -subj "/CN=callfabric fabric CA" \
  -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign"
# 2. The XMPP server's key and a request, signed by the CA for the domain and its subdomains.
openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$out/$domain.key" \
  -out "$out/$domain.csr" -subj "/CN=$domain"
printf 'subjectAltName=DNS:%s,DNS:*.%s\nextendedKeyUsage=serverAuth\n' "$domain" "$domain" > "$out/ext.cnf"
openssl x509 -req -in "$out/$domain.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
  -CAcreateserial -days 825 -sha256 -extfile "$out/ext.cnf" -out "$out/$domain.crt"
# ejabberd and Tigase want key and certificate in one file.
cat "$out/$domain.key" "$out/$domain.crt" > "$out/$domain.pem"
chmod 600 "$out/ca.key" "$out/$domain.key" "$out/$domain.pem"
rm -f "$out/$domain.csr" "$out/ext.cnf"
openssl verify -CAfile "$out/ca.pem" "$out/$domain.crt"
