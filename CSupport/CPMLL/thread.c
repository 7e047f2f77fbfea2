#define _GNU_SOURCE
#include "cpmll.h"
#include <pthread.h>

void pmll_thread_set_name(const char *name) {
    (void)pthread_setname_np(pthread_self(), name);
}
