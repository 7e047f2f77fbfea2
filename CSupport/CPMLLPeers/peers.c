#include "cpmll_peers.h"
