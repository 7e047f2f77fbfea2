#ifndef CPMLL_PEERS_H
#define CPMLL_PEERS_H
#endif
