// Signature and hash primitives from libsodium (Ed25519 and BLAKE2b), for minisign signatures
// (Sources/PMLL/Security/Minisign.swift) and the audit log's chain and checkpoints. No cryptography is written here.
#include <pthread.h>
#include <sodium.h>
#include "cpmll.h"

static int sodium_rc;
static void sodium_start(void) { sodium_rc = sodium_init() < 0 ? -1 : 0; }

// sodium_init also picks the fastest implementation of each primitive for this CPU; before
// it, BLAKE2b runs its portable code, 600-640 ns per audit record instead of about 470 (AVX2).
// Once per process: a drain calls the hash for every record.
static int sodium_ready(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, sodium_start);
    return sodium_rc;
}

int pmll_sign_init(void) {
    return sodium_ready();
}

int pmll_ed25519_verify(const uint8_t *signature, const uint8_t *message, uint64_t length, const uint8_t *public_key) {
    return crypto_sign_verify_detached(signature, message, length, public_key) == 0 ? 1 : 0;
}

int pmll_blake2b512(uint8_t *out, const uint8_t *message, uint64_t length) {
    (void)sodium_ready();
    return crypto_generichash(out, 64, message, length, NULL, 0) == 0 ? 0 : -1;
}

int pmll_audit_chain(uint8_t *out, const uint8_t *previous, const uint8_t *message, uint64_t length) {
    (void)sodium_ready();   // without it the hash is correct, only slower: its result is not needed
    crypto_generichash_state state;
    if (crypto_generichash_init(&state, NULL, 0, 32) != 0) return -1;
    crypto_generichash_update(&state, previous, 32);
    crypto_generichash_update(&state, message, length);
    return crypto_generichash_final(&state, out, 32) == 0 ? 0 : -1;
}

int pmll_ed25519_keypair(uint8_t *public_key, uint8_t *secret_key) {
    return crypto_sign_keypair(public_key, secret_key) == 0 ? 0 : -1;
}

int pmll_ed25519_sign(uint8_t *signature, const uint8_t *message, uint64_t length, const uint8_t *secret_key) {
    return crypto_sign_detached(signature, NULL, message, length, secret_key) == 0 ? 0 : -1;
}
