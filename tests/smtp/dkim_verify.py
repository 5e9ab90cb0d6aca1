"""Verifies a message's DKIM signature with dkimpy (PyPI), the key served from a file instead
of DNS:  python3 dkim_verify.py MESSAGE.eml PUBLIC_KEY_BASE64_FILE  → prints "pass" or "fail".
"""

import sys

import dkim


def main():
    message = open(sys.argv[1], "rb").read()
    p = open(sys.argv[2]).read().strip()
    record = ("v=DKIM1; k=rsa; p=%s" % p).encode()

    def dns(name, timeout=5):
        return record

    print("pass" if dkim.verify(message, dnsfunc=dns) else "fail")


if __name__ == "__main__":
    main()
