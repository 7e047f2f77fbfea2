// Declarations only (include/pmll_fuzz_driver.h); SwiftPM wants a source file in a C target.
#include "pmll_fuzz_driver.h"
