#!/usr/bin/python3
"""Writes a file in the pghoard/rohmu encrypted format (pghoa1) with
Python's cryptography package, independently of bulwark's Go code, for
internal/backup's legacy test. Usage: make-pghoa1.py PUBLIC_PEM IN OUT

The format, from docs/backup-format.md: b"pghoa1", a big-endian 16-bit
length, RSA-OAEP (SHA-1, MGF1-SHA-1, no label) of key(16) + counter
block(16) + HMAC key(32), the AES-128-CTR ciphertext, HMAC-SHA256 of the
ciphertext. Empty input gives an empty file."""
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

pub_path, in_path, out_path = sys.argv[1:4]
with open(pub_path, "rb") as f:
    pub = serialization.load_pem_public_key(f.read())
with open(in_path, "rb") as f:
    data = f.read()
with open(out_path, "wb") as out:
    if data:
        key, ctr, mac_key = os.urandom(16), os.urandom(16), os.urandom(32)
        oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        wrapped = pub.encrypt(key + ctr + mac_key, oaep)
        enc = Cipher(algorithms.AES(key), modes.CTR(ctr)).encryptor()
        ct = enc.update(data) + enc.finalize()
        tag = hmac.HMAC(mac_key, hashes.SHA256())
        tag.update(ct)
        out.write(b"pghoa1" + struct.pack(">H", len(wrapped)) + wrapped + ct + tag.finalize())
