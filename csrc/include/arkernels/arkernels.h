/* Umbrella header: every public arkernels C API. */
#ifndef ARKERNELS_ARKERNELS_H
#define ARKERNELS_ARKERNELS_H
#include "arkernels/status.h"
#include "arkernels/linear_scan.h"
#include "arkernels/selective_scan.h"
#include "arkernels/causal_conv1d.h"
#include "arkernels/selective_state_update.h"
#include "arkernels/ssd_chunk_scan.h"
#include "arkernels/block_sparse_attention.h"
#endif
