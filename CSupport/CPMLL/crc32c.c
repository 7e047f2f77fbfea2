#include "cpmll.h"
#include <string.h>

// CRC32C (Castagnoli), reflected, as used by iSCSI/ext4: the SSE4.2 instruction where the
// CPU has it, else a byte-wise table. Both give CRC32C("123456789") = 0xE3069283.
static uint32_t table[256];
static int table_ready;

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t pmll_crc32c_software(uint32_t crc, const void *data, size_t length) {
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) build_table();  // idempotent
    const uint8_t *p = data;
    crc = ~crc;
    while (length--) crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const void *data, size_t length) {
    const uint8_t *p = data;
    uint64_t c = ~crc;
    while (length >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        length -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    // The tail in at most three steps, not up to seven (each waits for the one before).
    if (length & 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        c32 = _mm_crc32_u32(c32, v);
        p += 4;
    }
    if (length & 2) {
        uint16_t v;
        memcpy(&v, p, 2);
        c32 = _mm_crc32_u16(c32, v);
        p += 2;
    }
    if (length & 1) c32 = _mm_crc32_u8(c32, *p);
    return ~c32;
}

// The audit slot's checksum (see pmll_audit_slot_t) in one call, read from the slot: the drain
// checks every record with it (appenders compute it from values: record_checksum_sse42).
__attribute__((target("sse4.2"))) static uint32_t audit_checksum_sse42(const pmll_audit_slot_t *s, uint64_t seq, size_t text_length) {
    const uint8_t *raw = (const uint8_t *)s;
    uint64_t c = _mm_crc32_u64(0xFFFFFFFFu, seq);
    uint64_t v;
    for (size_t i = 12; i < 36; i += 8) {
        memcpy(&v, raw + i, 8);
        c = _mm_crc32_u64(c, v);
    }
    return crc32c_sse42(~(uint32_t)c, raw + 40, 16 + text_length);
}
#endif

static int crc32c_hardware(void) {
#if defined(__x86_64__)
    static int hardware = -1;
    if (__builtin_expect(hardware < 0, 0)) hardware = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    return hardware;
#else
    return 0;
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t record_checksum_sse42(uint64_t seq, int32_t pid, uint32_t uid, uint16_t event, uint16_t outcome,
                                                                       int64_t time_ns, uint64_t comm_low, uint64_t comm_high, const void *text, size_t text_length) {
    uint64_t c = _mm_crc32_u64(0xFFFFFFFFu, seq);
    uint32_t c32 = _mm_crc32_u32((uint32_t)c, (uint32_t)pid);
    c32 = _mm_crc32_u32(c32, uid);
    c32 = _mm_crc32_u16(c32, event);
    c32 = _mm_crc32_u16(c32, outcome);
    c = _mm_crc32_u64(c32, (uint64_t)time_ns);
    c = _mm_crc32_u32((uint32_t)c, (uint32_t)text_length);
    c = _mm_crc32_u64(c, comm_low);
    c = _mm_crc32_u64(c, comm_high);
    return crc32c_sse42(~(uint32_t)c, text, text_length);
}
#endif

uint32_t pmll_audit_record_checksum(uint64_t seq, int32_t pid, uint32_t uid, uint16_t event, uint16_t outcome, int64_t time_ns,
                                    uint64_t comm_low, uint64_t comm_high, const void *text, size_t text_length) {
#if defined(__x86_64__)
    if (crc32c_hardware()) return record_checksum_sse42(seq, pid, uid, event, outcome, time_ns, comm_low, comm_high, text, text_length);
#endif
    // The slot's bytes, laid out as the slot lays them out (this host's byte order).
    pmll_audit_slot_t s;
    s.pid = pid;
    s.uid = uid;
    s.event = event;
    s.outcome = outcome;
    s.time_ns = time_ns;
    s.text_length = (uint32_t)text_length;
    uint8_t comm[16];
    for (int i = 0; i < 8; i++) {
        comm[i] = (uint8_t)(comm_low >> (8 * i));
        comm[8 + i] = (uint8_t)(comm_high >> (8 * i));
    }
    uint32_t crc = pmll_crc32c_software(0, &seq, 8);
    crc = pmll_crc32c_software(crc, (const uint8_t *)&s + 12, 24);
    crc = pmll_crc32c_software(crc, comm, 16);
    return pmll_crc32c_software(crc, text, text_length);
}

uint32_t pmll_audit_slot_checksum(const pmll_audit_slot_t *s, uint64_t seq) {
    size_t text_length = s->text_length < PMLL_AUDIT_TEXT_MAX ? s->text_length : PMLL_AUDIT_TEXT_MAX;
    const uint8_t *raw = (const uint8_t *)s;
#if defined(__x86_64__)
    if (crc32c_hardware()) return audit_checksum_sse42(s, seq, text_length);
#endif
    uint32_t crc = pmll_crc32c_software(0, &seq, 8);
    crc = pmll_crc32c_software(crc, raw + 12, 24);
    return pmll_crc32c_software(crc, raw + 40, 16 + text_length);
}

uint32_t pmll_crc32c(uint32_t crc, const void *data, size_t length) {
#if defined(__x86_64__)
    if (crc32c_hardware()) return crc32c_sse42(crc, data, length);
#endif
    return pmll_crc32c_software(crc, data, length);
}
