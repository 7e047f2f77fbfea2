#define _GNU_SOURCE
#include "cpmll.h"
#include <unistd.h>

int pmll_execvpe(const char *file, char *const argv[], char *const envp[]) {
    return execvpe(file, argv, envp);
}
