#include "cpmll.h"
#include <stddef.h>

// FNV-1a over the facts that decide how bytes in the pool file are read: the format version,
// and each durable struct's size and the offsets of its fields (a change to any field's place
// or width moves one of them). Computed once; the compiler folds most of it.
static uint64_t mix(uint64_t h, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        h ^= (v >> (8 * i)) & 0xff;
        h *= 0x100000001b3ull;
    }
    return h;
}

#define FIELD(T, f) offsetof(T, f), sizeof(((T *)0)->f)

uint64_t pmll_layout_signature(void) { return pmll_layout_signature_of_store(PMLL_STORE_VERSION); }

// The key slot enters as its width and its fields, the inline record last: for a version 1
// store these are the facts builds before version 2 folded in (a 128-byte struct whose last
// field, 88 bytes at offset 40, was the inline record), so their pools keep their signature.
uint64_t pmll_layout_signature_of_store(uint32_t store_version) {
    const uint64_t width = pmll_key_slot_width(store_version);
    if (width == 0) return 0;
    const uint64_t facts[] = {
        PMLL_FORMAT_VERSION, PMLL_HEADER_SIZE, store_version, PMLL_BLOCK_SIZE, PMLL_LOG_SLOT_SIZE,
        width - PMLL_KEY_SLOT_HEAD, PMLL_PAYLOAD_MAX, PMLL_HISTOGRAM_BUCKETS, PMLL_WAIT_LEDGER,
        sizeof(pmll_header_t), FIELD(pmll_header_t, format_version), FIELD(pmll_header_t, pool_size),
        FIELD(pmll_header_t, flags), FIELD(pmll_header_t, process_capacity), FIELD(pmll_header_t, lock_capacity),
        FIELD(pmll_header_t, process_table), FIELD(pmll_header_t, lock_table), FIELD(pmll_header_t, heap),
        FIELD(pmll_header_t, queue_table), FIELD(pmll_header_t, queue_capacity), FIELD(pmll_header_t, queue_ring),
        FIELD(pmll_header_t, layout_signature), FIELD(pmll_header_t, header_checksum), FIELD(pmll_header_t, boot_id),
        sizeof(pmll_section_t),
        sizeof(pmll_process_slot_t), FIELD(pmll_process_slot_t, generation), FIELD(pmll_process_slot_t, pid),
        FIELD(pmll_process_slot_t, start_time), FIELD(pmll_process_slot_t, comm), FIELD(pmll_process_slot_t, waiting_on),
        sizeof(pmll_lock_entry_t), FIELD(pmll_lock_entry_t, word), FIELD(pmll_lock_entry_t, handoff_target),
        FIELD(pmll_lock_entry_t, state), FIELD(pmll_lock_entry_t, level), FIELD(pmll_lock_entry_t, acquisitions),
        FIELD(pmll_lock_entry_t, name_length), FIELD(pmll_lock_entry_t, entry_checksum), FIELD(pmll_lock_entry_t, held_since_ns),
        FIELD(pmll_lock_entry_t, timeouts), FIELD(pmll_lock_entry_t, dead_pid), FIELD(pmll_lock_entry_t, dead_cause),
        FIELD(pmll_lock_entry_t, name), FIELD(pmll_lock_entry_t, shared)   /* same place and size as the reserved3 it replaced */,
        sizeof(pmll_queue_head_t), FIELD(pmll_queue_head_t, serving_word), FIELD(pmll_queue_head_t, submit_lock),
        FIELD(pmll_queue_head_t, next_ticket), FIELD(pmll_queue_head_t, serving), FIELD(pmll_queue_head_t, checksum),
        FIELD(pmll_queue_head_t, completed), FIELD(pmll_queue_head_t, flush_requested), FIELD(pmll_queue_head_t, flush_word),
        FIELD(pmll_queue_head_t, wait_histogram), FIELD(pmll_queue_head_t, name),
        sizeof(pmll_record_t), FIELD(pmll_record_t, ticket), FIELD(pmll_record_t, state), FIELD(pmll_record_t, owner_token),
        FIELD(pmll_record_t, recovered), FIELD(pmll_record_t, submitted_ns), FIELD(pmll_record_t, payload_length),
        FIELD(pmll_record_t, checksum), FIELD(pmll_record_t, kind), FIELD(pmll_record_t, error), FIELD(pmll_record_t, payload),
        sizeof(pmll_store_super_t), FIELD(pmll_store_super_t, key_capacity), FIELD(pmll_store_super_t, block_count),
        FIELD(pmll_store_super_t, index_offset), FIELD(pmll_store_super_t, blocks_offset), FIELD(pmll_store_super_t, checksum),
        width, FIELD(pmll_key_slot_t, key_hash), FIELD(pmll_key_slot_t, first_block),
        FIELD(pmll_key_slot_t, checksum), FIELD(pmll_key_slot_t, version), PMLL_KEY_SLOT_HEAD, width - PMLL_KEY_SLOT_HEAD,
        sizeof(pmll_log_header_t), FIELD(pmll_log_header_t, done_seq), FIELD(pmll_log_header_t, seq),
        FIELD(pmll_log_header_t, entry_count), FIELD(pmll_log_header_t, checksum),
        sizeof(pmll_log_entry_t), FIELD(pmll_log_entry_t, offset), FIELD(pmll_log_entry_t, length),
    };
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < sizeof(facts) / sizeof(facts[0]); i++) h = mix(h, facts[i]);
    return h == 0 ? 1 : h;   // 0 means "no signature" in a header
}
