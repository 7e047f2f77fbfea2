#include "cpmll.h"
#include <stdlib.h>

__thread const pmll_lock_entry_t *pmll_held_top;
__thread uint32_t pmll_tx_depth;

uint32_t pmll_async_scope_count;

void pmll_async_scopes_add(int32_t delta) { __atomic_add_fetch(&pmll_async_scope_count, (uint32_t)delta, __ATOMIC_ACQ_REL); }

int pmll_crash_armed;

__attribute__((constructor)) static void pmll_read_crash_env(void) {
    const char *at = getenv("PMLL_CRASH_AT"), *trace = getenv("PMLL_CRASH_TRACE"), *pause = getenv("PMLL_PAUSE_AT");
    pmll_crash_armed = (at != NULL && at[0] != 0) || (trace != NULL && trace[0] != 0) || (pause != NULL && pause[0] != 0);
}
