// The audit drain's hot path: one record line formatted and chained in C, once per record.
// The format is AuditLine's (Sources/PMLLCore/Audit/AuditLine.swift): one JSON object, fields
// in a fixed order, `,"hash":"HEX"}` and a newline after the hashed body. Both must write the
// same bytes; the tests compare them.
#include <string.h>
#include "cpmll.h"

static const char hex_digits[] = "0123456789abcdef";

static char *put(char *p, const char *s, size_t n) {
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LITERAL(p, literal) put((p), (literal), sizeof(literal) - 1)

static char *put_u64(char *p, uint64_t v) { return pmll_put_decimal(p, v); }

static char *put_i64(char *p, int64_t v) {
    if (v >= 0) return put_u64(p, (uint64_t)v);
    *p++ = '-';
    return put_u64(p, (uint64_t)0 - (uint64_t)v);
}

// A number of the slot's text (the mark and 8 bytes, little-endian) at s[i], if one is there;
// a mark with fewer bytes after it (a text cut short by a writer's death) is a plain byte.
static int number_at(const unsigned char *s, size_t i, size_t n, uint64_t *value) {
    if (s[i] != PMLL_AUDIT_NUMBER_MARK || n - i < 9) return 0;
    uint64_t v;
    memcpy(&v, s + i + 1, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    *value = v;
    return 1;
}

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
// Whether any of the 8 bytes of w is a control byte, a quote, a backslash or the number mark:
// exact as to whether there is one (the bit tricks may misplace which).
static int special8(uint64_t w) {
    uint64_t below32 = (w - 32 * ONES) & ~w & HIGHS;
    uint64_t q = w ^ ('"' * ONES), b = w ^ ('\\' * ONES), m = ~w;
    uint64_t zero = ((q - ONES) & ~q) | ((b - ONES) & ~b) | ((m - ONES) & ~m);
    return (below32 | (zero & HIGHS)) != 0;
}

// Text as a JSON string's contents (`escape`: quote, backslash and control bytes escaped,
// other bytes as they are) or as it is; with `numbers`, each number in decimal. Eight plain
// bytes at a time (the line format was a sixth of a drain, mostly this loop).
static char *put_text(char *p, const unsigned char *s, size_t n, int numbers, int escape) {
    for (size_t i = 0; i < n; i++) {
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!special8(w)) {
                memcpy(p, &w, 8);
                p += 8;
                i += 7;
                continue;
            }
        }
        unsigned char b = s[i];
        if (b >= 32 && b != '"' && b != '\\' && b != PMLL_AUDIT_NUMBER_MARK) {
            *p++ = (char)b;
            continue;
        }
        uint64_t v;
        if (numbers && number_at(s, i, n, &v)) {
            p = put_u64(p, v);
            i += 8;
            continue;
        }
        if (!escape || (b >= 32 && b != '"' && b != '\\')) {
            *p++ = (char)b;
            continue;
        }
        *p++ = '\\';
        switch (b) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\n': *p++ = 'n'; break;
        case '\r': *p++ = 'r'; break;
        case '\t': *p++ = 't'; break;
        default:
            p = PUT_LITERAL(p, "u00");
            *p++ = hex_digits[b >> 4];
            *p++ = hex_digits[b & 15];
        }
    }
    return p;
}

size_t pmll_audit_object_text(char *out, const pmll_audit_slot_t *s, int numbers) {
    size_t text_length = pmll_audit_text_length(s);
    return (size_t)(put_text(out, (const unsigned char *)s->text, text_length, numbers, 0) - out);
}

size_t pmll_audit_format_line(char *out, const pmll_audit_slot_t *s, uint64_t seq, const char *event, size_t event_length,
                              const char *outcome, size_t outcome_length, const uint8_t *previous, uint8_t *hash, int numbers) {
    size_t text_length = pmll_audit_text_length(s);
    char *p = out;
    p = PUT_LITERAL(p, "{\"seq\":");
    p = put_u64(p, seq);
    p = PUT_LITERAL(p, ",\"time_ns\":");
    p = put_i64(p, s->time_ns);
    p = PUT_LITERAL(p, ",\"pid\":");
    p = put_i64(p, s->pid);
    p = PUT_LITERAL(p, ",\"uid\":");
    p = put_u64(p, s->uid);
    p = PUT_LITERAL(p, ",\"command\":\"");
    p = put_text(p, (const unsigned char *)s->comm, strnlen(s->comm, sizeof s->comm), 0, 1);
    p = PUT_LITERAL(p, "\",\"event\":\"");
    p = put(p, event, event_length < PMLL_AUDIT_NAME_MAX ? event_length : PMLL_AUDIT_NAME_MAX);
    p = PUT_LITERAL(p, "\",\"object\":\"");
    p = put_text(p, (const unsigned char *)s->text, text_length, numbers, 1);
    p = PUT_LITERAL(p, "\",\"outcome\":\"");
    p = put(p, outcome, outcome_length < PMLL_AUDIT_NAME_MAX ? outcome_length : PMLL_AUDIT_NAME_MAX);
    *p++ = '"';
    // Read for the last time until an appender claims the slot again, a ring later: from the
    // shared cache it takes that appender's core less than from this one's (measured: audit
    // cost of a commit 9.6 % -> 7.5 %, medians of six runs).
    pmll_cache_demote(s, offsetof(pmll_audit_slot_t, text) + text_length);
    // BLAKE2b-256 with these fixed parameters cannot fail (libsodium checks only their ranges).
    (void)pmll_audit_chain(hash, previous, (const uint8_t *)out, (uint64_t)(p - out));
    return (size_t)(pmll_audit_hash_tail(p, hash) - out);
}

char *pmll_audit_hash_tail(char *p, const uint8_t *hash) {
    p = PUT_LITERAL(p, ",\"hash\":\"");
    for (int i = 0; i < PMLL_AUDIT_HASH_SIZE; i++) {
        *p++ = hex_digits[hash[i] >> 4];
        *p++ = hex_digits[hash[i] & 15];
    }
    return PUT_LITERAL(p, "\"}\n");
}
