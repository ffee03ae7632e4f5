// DPMSF tokens in the browser: the same wire format as dpmsf_core/tokens.py, minted with Web Crypto.
//
//   import { mintToken } from "./dpmsf-token.js";
//   const token = await mintToken(tenantId, keyB64url);            // valid 60 s, works once
//   fetch(url, { headers: { Authorization: `Bearer ${token}` } });
//
// token = base64url_no_padding(0x01 || tenant UUID (16 bytes) || nonce (12 bytes) || AES-256-GCM ciphertext+tag)
// with additional data = 0x01 || tenant UUID, and plaintext = {"iat":<int>,"exp":<int>,"jti":"<32 hex>"}.
// Anyone holding the key can mint tokens: ship a key to a browser only for a tenant you trust with it.
// Web Crypto (crypto.subtle) exists only in secure contexts: pages served over https or from localhost.

const VERSION = 1;
const keyCache = new Map(); // base64url key text -> CryptoKey, so importKey runs once per key

function b64urlDecode(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) throw new TypeError("DPMSF key is not base64url text");
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

function b64urlEncode(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function uuidBytes(tenantId) {
  const hex = String(tenantId).replace(/[{}-]/g, "").toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(hex)) throw new TypeError(`DPMSF tenant id '${tenantId}' is not a UUID`);
  return Uint8Array.from(hex.match(/../g), (h) => parseInt(h, 16));
}

async function cryptoKey(keyB64url) {
  let key = keyCache.get(keyB64url);
  if (!key) {
    const raw = b64urlDecode(String(keyB64url).trim().replace(/=+$/, ""));
    if (raw.length !== 32) throw new TypeError(`DPMSF key is ${raw.length} bytes long, expected 32`);
    key = await crypto.subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt"]);
    keyCache.set(keyB64url, key);
  }
  return key;
}

/** A fresh single-use token for `tenantId`, valid `ttl` seconds; every call gives a different one. */
export async function mintToken(tenantId, keyB64url, ttl = 60) {
  if (!(ttl > 0)) throw new RangeError(`DPMSF token ttl ${ttl} is not a positive number of seconds`);
  const header = new Uint8Array(17);
  header[0] = VERSION;
  header.set(uuidBytes(tenantId), 1);
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const jti = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  const now = Date.now() / 1000;
  const plaintext = new TextEncoder().encode(
    JSON.stringify({ iat: Math.floor(now), exp: Math.floor(now + ttl), jti }),
  );
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt(
      { name: "AES-GCM", iv: nonce, additionalData: header, tagLength: 128 },
      await cryptoKey(keyB64url),
      plaintext,
    ),
  );
  const token = new Uint8Array(header.length + nonce.length + sealed.length);
  token.set(header, 0);
  token.set(nonce, header.length);
  token.set(sealed, header.length + nonce.length);
  return b64urlEncode(token);
}

/** The Authorization header value for a fresh token. */
export async function bearer(tenantId, keyB64url, ttl = 60) {
  return `Bearer ${await mintToken(tenantId, keyB64url, ttl)}`;
}
