"""private_key_jwt client assertions made by a third-party library (jwcrypto), for test/private-key-jwt.test.ts.

argv: client id, audience. Prints JSON: {"jwks": {"keys": [public JWKs]}, "assertions": {alg: JWT}} for
ES256 (P-256), PS256 and RS256 (RSA 2048) and EdDSA (Ed25519), each signed by its own key.
"""
import json
import sys
import time
import uuid

from jwcrypto import jwk, jwt

client_id, audience = sys.argv[1], sys.argv[2]
keys = {
    "ES256": jwk.JWK.generate(kty="EC", crv="P-256", kid="py-es"),
    "PS256": jwk.JWK.generate(kty="RSA", size=2048, kid="py-rsa"),
    "EdDSA": jwk.JWK.generate(kty="OKP", crv="Ed25519", kid="py-ed"),
}
keys["RS256"] = keys["PS256"]
now = int(time.time())
assertions = {}
for alg, key in keys.items():
    token = jwt.JWT(
        header={"alg": alg, "kid": key.key_id},
        claims={"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())},
    )
    token.make_signed_token(key)
    assertions[alg] = token.serialize()
public = [json.loads(key.export_public()) for key in (keys["ES256"], keys["PS256"], keys["EdDSA"])]
print(json.dumps({"jwks": {"keys": public}, "assertions": assertions}))
