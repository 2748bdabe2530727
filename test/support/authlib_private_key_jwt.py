"""The client credentials flow of a third-party OAuth2 client, Authlib's requests OAuth2Session with its
PrivateKeyJWT client authentication (RFC 7523), for test/private-key-jwt.test.ts.

argv: token endpoint, introspection endpoint, revocation endpoint (where to send), and the audience of
the assertions (the token endpoint as the authority publishes it). stdin: JSON
{"clients": [{"client_id", "alg" (RS256 or ES256), "pem" (the private key, PKCS#8)}]}. For each
client: a token (client_credentials), its introspection, its revocation, and the introspection
after it, every call authenticated by a fresh Authlib-made assertion; then a token request with
Authlib's default assertion, whose exp is an hour ahead (the authority takes at most 5 minutes).
Prints JSON {client_id: {"token_type", "scope", "active", "active_after_revoke", "default_lifetime"}};
an OAuth2 error is {"error": ...}.
(Authlib has no DPoP client: its own id_jag.py says "Authlib supports neither DPoP nor mTLS".)
"""
import json
import sys
import time

from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey



class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """PrivateKeyJWT with exp 2 minutes ahead instead of Authlib's hour. A fresh claims dict per
    assertion: Authlib writes the jti into the one it is given, so a shared dict would repeat it."""

    def sign(self, auth, token_endpoint):
        self.claims = {"exp": int(time.time()) + 120}
        return super().sign(auth, token_endpoint)


token_endpoint, introspection_endpoint, revocation_endpoint, audience = sys.argv[1:5]
results = {}
for client in json.load(sys.stdin)["clients"]:
    # PrivateKeyJWT takes a PEM as an RSA key; another key type is given as a joserfc key.
    key = ECKey.import_key(client["pem"]) if client["alg"] == "ES256" else client["pem"]
    session = OAuth2Session(
        client["client_id"],
        key,
        token_endpoint_auth_method="private_key_jwt",
        revocation_endpoint_auth_method="private_key_jwt",
    )
    session.register_client_auth_method(ShortLivedPrivateKeyJWT(audience, alg=client["alg"]))
    try:
        token = session.fetch_token(token_endpoint, grant_type="client_credentials", scope="read")
        access_token = token["access_token"]
        before = session.introspect_token(introspection_endpoint, token=access_token).json()
        revoked = session.revoke_token(revocation_endpoint, token=access_token)
        revoked.raise_for_status()
        after = session.introspect_token(introspection_endpoint, token=access_token).json()
        results[client["client_id"]] = {
            "token_type": token["token_type"],
            "scope": token.get("scope"),
            "active": before.get("active"),
            "active_after_revoke": after.get("active"),
        }
    except Exception as error:  # an OAuth2 error from Authlib, or an HTTP one
        results[client["client_id"]] = {"error": str(error)}
        continue
    session.register_client_auth_method(PrivateKeyJWT(audience, alg=client["alg"]))
    try:
        session.fetch_token(token_endpoint, grant_type="client_credentials")
        results[client["client_id"]]["default_lifetime"] = "issued"
    except Exception as error:
        results[client["client_id"]]["default_lifetime"] = getattr(error, "error", str(error))
print(json.dumps(results))
