#define _GNU_SOURCE
#include "cpmll.h"
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <unistd.h>

// Reads a whole /proc file (its size is not known in advance). NULL if unreadable.
static char *read_proc_file(const char *path, size_t *length) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t capacity = 16384, used = 0;
    char *buffer = malloc(capacity + 1);
    while (buffer) {
        if (used == capacity) {
            char *bigger = realloc(buffer, capacity * 2 + 1);
            if (!bigger) { free(buffer); buffer = NULL; break; }
            buffer = bigger;
            capacity *= 2;
        }
        ssize_t n = read(fd, buffer + used, capacity - used);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { free(buffer); buffer = NULL; break; }
        if (n == 0) break;
        used += (size_t)n;
    }
    close(fd);
    if (buffer) { buffer[used] = 0; *length = used; }
    return buffer;
}

// Whether a maps listing has a line whose path is exactly `needle` (which ends in " (deleted)").
static int maps_name(const char *maps, size_t length, const char *needle, size_t needle_length) {
    const char *end = maps + length;
    for (const char *p = maps; (p = memmem(p, (size_t)(end - p), needle, needle_length)); p++) {
        int starts_path = p > maps && p[-1] == ' ';
        int ends_line = p + needle_length == end || p[needle_length] == '\n';
        if (starts_path && ends_line) return 1;
    }
    return 0;
}

pid_t pmll_find_deleted_mapping(const char *absolute_path, char *command, size_t command_size) {
    char needle[PATH_MAX + 16];
    int needle_length = snprintf(needle, sizeof needle, "%s (deleted)", absolute_path);
    if (needle_length <= 0 || (size_t)needle_length >= sizeof needle) return 0;
    DIR *proc = opendir("/proc");
    if (!proc) return 0;
    pid_t found = 0;
    struct dirent *entry;
    while (!found && (entry = readdir(proc))) {
        if (!isdigit((unsigned char)entry->d_name[0])) continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%s/maps", entry->d_name);
        size_t length = 0;
        char *maps = read_proc_file(path, &length);   // another user's process: EACCES, skipped
        if (!maps) continue;
        if (maps_name(maps, length, needle, (size_t)needle_length)) found = (pid_t)atoi(entry->d_name);
        free(maps);
    }
    closedir(proc);
    if (found && command && command_size > 0) {
        command[0] = 0;
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/comm", (int)found);
        size_t length = 0;
        char *comm = read_proc_file(path, &length);
        if (comm) {
            if (length > 0 && comm[length - 1] == '\n') comm[length - 1] = 0;
            snprintf(command, command_size, "%s", comm);
            free(comm);
        }
    }
    return found;
}

// A /proc/locks line: "N: OFDLCK ADVISORY  READ -1 MAJ:MIN:INODE START END" (a waiter's line
// has "-> " after the number). The device and inode are the one field with two colons.
int pmll_locks_line_is_other_pool(const char *line, uint64_t own_inode) {
    if (!strstr(line, "OFDLCK")) return 0;
    const char *p = line;
    while (*p) {
        while (*p == ' ') p++;
        const char *token = p;
        while (*p && *p != ' ') p++;
        const char *first = memchr(token, ':', (size_t)(p - token));
        const char *second = first ? memchr(first + 1, ':', (size_t)(p - first - 1)) : NULL;
        if (!second) continue;
        uint64_t inode = strtoull(second + 1, NULL, 10);
        long long start = strtoll(p, NULL, 10);
        return inode != own_inode && (start == PMLL_LOCKBYTE_INIT || start == PMLL_LOCKBYTE_SESSION);
    }
    return 0;
}

int pmll_other_pool_open(uint64_t own_inode) {
    size_t length = 0;
    char *locks = read_proc_file("/proc/locks", &length);
    if (!locks) return -1;
    int found = 0;
    for (char *line = locks; !found && line < locks + length;) {
        char *end = memchr(line, '\n', (size_t)(locks + length - line));
        if (end) *end = 0;
        found = pmll_locks_line_is_other_pool(line, own_inode);
        line = end ? end + 1 : locks + length;
    }
    free(locks);
    return found;
}

int64_t pmll_fs_timestamp_settle_ns(const char *path) {
    struct statfs fs;
    if (statfs(path, &fs) != 0) return 2000000000;
    switch ((unsigned long)fs.f_type) {
    case EXT4_SUPER_MAGIC:   // also ext2 and ext3
    case XFS_SUPER_MAGIC:
    case BTRFS_SUPER_MAGIC:
    case F2FS_SUPER_MAGIC:
    case TMPFS_MAGIC:
    case RAMFS_MAGIC:
        return 50000000;
    default:
        return 2000000000;
    }
}
