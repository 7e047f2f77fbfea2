/* Docs/C-API.md's example: the design's lock snippet and a transaction, in a complete
 * program. Build and run (PREFIX as given to Stress/install-c-library):
 *   export PKG_CONFIG_PATH=PREFIX/lib/pkgconfig
 *   cc cache_lock.c $(pkg-config --cflags --libs pmll) -o cache_lock && ./cache_lock /tmp/cpm.pool
 */
#include <pmll.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : NULL;   /* NULL: $PMLL_POOL or the default pool */
    PMEMContextHandle *pmem_ctx = pmem_context_create(path, 0, true);
    if (!pmem_ctx) {
        fprintf(stderr, "%s\n", pmll_last_error());   /* "pmll: ..." */
        return 1;
    }

    PMLL_Lock cache_lock;
    if (pmll_lock_init(&cache_lock, "package_cache", true, pmem_ctx) != CPM_RESULT_SUCCESS) {
        fprintf(stderr, "%s\n", pmll_last_error());
        return 1;
    }
    if (pmll_lock_acquire(&cache_lock, 5000) == CPM_RESULT_SUCCESS) {
        if (pmll_lock_previous_owner_died(&cache_lock)) {
            PMLL_OwnerDeath death;
            pmll_lock_owner_death(&cache_lock, &death);
            printf("previous holder pid %d (%s) died: checking the cache\n", death.pid, death.command);
        }
        /* Critical section - modify cache */
        pmll_lock_release(&cache_lock);
    } else {
        fprintf(stderr, "%s\n", pmll_last_error());   /* e.g. timeout, naming the holder */
    }

    /* Installation status, atomically; run again on a conflict. */
    CPM_Result r;
    do {
        PMLL_Transaction *tx = pmll_transaction_begin(pmem_ctx);
        if (!tx) { fprintf(stderr, "%s\n", pmll_last_error()); return 1; }
        pmll_tx_set(tx, "pkg/zlib/status", "installed", strlen("installed"));
        pmll_tx_set(tx, "pkg/zlib/version", "1.3.1", strlen("1.3.1"));
        r = pmll_transaction_commit(tx);
    } while (r == PMLL_RESULT_CONFLICT);
    if (r != CPM_RESULT_SUCCESS) { fprintf(stderr, "%s\n", pmll_last_error()); return 1; }

    pmll_lock_destroy(&cache_lock);
    pmem_context_close(pmem_ctx);
    printf("zlib installed\n");
    return 0;
}
