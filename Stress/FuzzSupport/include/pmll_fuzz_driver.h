#ifndef PMLL_FUZZ_DRIVER_H
#define PMLL_FUZZ_DRIVER_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's entry for programs with their own main (the fuzzing build of pmll-fuzz:
// SwiftPM names an executable's entry point after its target, so libFuzzer's main is not
// the one that runs). Only the -sanitize=fuzzer build references it.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
