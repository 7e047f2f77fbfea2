#define _GNU_SOURCE
#include "cpmll.h"
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

// Why: when a process that holds a lock is killed, the kernel tears its address space down
// before its pidfd fires, and a waiter woken onto the CPU of that teardown waits for all of it
// (Docs/Benchmarks.md, "Takeover, traced from the waiter's side"). Each mapped page of a file
// adds about 0.1 µs to that teardown, and `pmll lock` keeps some 1,650 pages of program text
// and constants (its own and libc's) mapped while its COMMAND runs. Their page-table entries
// can go while it waits: the pages stay in the page cache, and what runs after COMMAND faults
// back the few it needs.

// pagemap(5): bit 63 page present, bit 61 file page or shared anonymous. Present without bit 61
// is a private copy (a debugger's breakpoint, a uprobe): dropping it would lose it.
#define PAGEMAP_PRESENT (1ull << 63)
#define PAGEMAP_FILE (1ull << 61)

struct drop { int pagemap; long page; long dropped; };

// 1 if every present page of [start, end) is the file's own, 0 if one is a private copy or
// the map cannot be read.
static int only_file_pages(int pagemap, uintptr_t start, uintptr_t end, long page) {
    uint64_t entries[512];
    for (uintptr_t at = start; at < end;) {
        size_t pages = (end - at) / (size_t)page;
        if (pages > 512) pages = 512;
        ssize_t n;
        do n = pread(pagemap, entries, pages * sizeof entries[0], (off_t)(at / (size_t)page * sizeof entries[0]));
        while (n < 0 && errno == EINTR);
        if (n != (ssize_t)(pages * sizeof entries[0])) return 0;
        for (size_t i = 0; i < pages; i++)
            if ((entries[i] & PAGEMAP_PRESENT) && !(entries[i] & PAGEMAP_FILE)) return 0;
        at += pages * (size_t)page;
    }
    return 1;
}

// Every loaded object's segments that are mapped without write permission: text and
// constants. (Relocated constants, RELRO, lie in a writable segment and are left alone.)
static int drop_object(struct dl_phdr_info *info, size_t size, void *context) {
    (void)size;
    struct drop *d = context;
    if (info->dlpi_name && strncmp(info->dlpi_name, "linux-vdso", 10) == 0) return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || (ph->p_flags & PF_W) || ph->p_memsz == 0) continue;
        // Only the pages wholly inside the segment: a page it shares with a writable neighbour
        // is that neighbour's.
        uintptr_t mask = (uintptr_t)d->page - 1;
        uintptr_t start = (info->dlpi_addr + ph->p_vaddr + mask) & ~mask;
        uintptr_t end = (info->dlpi_addr + ph->p_vaddr + ph->p_memsz) & ~mask;
        if (end <= start || !only_file_pages(d->pagemap, start, end, d->page)) continue;
        if (madvise((void *)start, end - start, MADV_DONTNEED) == 0) d->dropped += (long)(end - start);
    }
    return 0;
}

long pmll_drop_clean_file_mappings(void) {
    int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0) return -1;
    struct drop d = { .pagemap = pagemap, .page = sysconf(_SC_PAGESIZE), .dropped = 0 };
    if (d.page > 0) (void)dl_iterate_phdr(drop_object, &d);
    close(pagemap);
    return d.dropped;
}
