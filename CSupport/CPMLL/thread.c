#define _GNU_SOURCE
#include "cpmll.h"
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

void pmll_thread_set_name(const char *name) {
    (void)pthread_setname_np(pthread_self(), name);
}

int32_t pmll_thread_id(void) {
    return (int32_t)syscall(SYS_gettid);
}
