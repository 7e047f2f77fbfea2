// Signature primitives from libsodium (Ed25519 and BLAKE2b), for minisign signatures
// (Sources/PMLLCore/Security/Minisign.swift). No cryptography is written here.
#include <sodium.h>
#include "cpmll.h"

int pmll_sign_init(void) {
    return sodium_init() < 0 ? -1 : 0;
}

int pmll_ed25519_verify(const uint8_t *signature, const uint8_t *message, uint64_t length, const uint8_t *public_key) {
    return crypto_sign_verify_detached(signature, message, length, public_key) == 0 ? 1 : 0;
}

int pmll_blake2b512(uint8_t *out, const uint8_t *message, uint64_t length) {
    return crypto_generichash(out, 64, message, length, NULL, 0) == 0 ? 0 : -1;
}
