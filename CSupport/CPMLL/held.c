#include "cpmll.h"

static __thread const pmll_lock_entry_t *held_top;

const pmll_lock_entry_t *pmll_held_top_get(void) { return held_top; }
void pmll_held_top_set(const pmll_lock_entry_t *entry) { held_top = entry; }
