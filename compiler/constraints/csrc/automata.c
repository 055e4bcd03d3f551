/* Partition refinements of the token index (compiler/constraints/token_index.py), in C.
 *
 * Both functions read a DFA transition table (int32 [n, c], -1 = the dead state) and label its
 * states so that equal labels mean "the token index needs one row for them". They are the same
 * refinements as the numpy code in token_index.py (`_moore_classes`, `_positional_classes`),
 * which stays as the path without a compiler: the labels are numbered by first occurrence
 * (state 0's label is 0, the next new label 1, ...), as the numpy path numbers its own, so the two
 * paths give identical arrays.
 *
 * Grouping is exact: states are hashed by their signature, and a hash bucket's states are
 * compared field by field with the bucket's first state before they join it.
 *
 * Every function returns the number of labels (>= 0) or a negative status:
 *   -1  out of memory;  -2  past the deadline (CLOCK_MONOTONIC seconds; <= 0: none);
 *   -3  a table entry outside [-1, n) or a column outside [0, c) (the table is not read past it).
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ERR_MEMORY (-1)
#define ERR_DEADLINE (-2)
#define ERR_TABLE (-3)

static int past(double deadline) {
    if (deadline <= 0) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec > deadline;
}

static int table_ok(const int32_t *table, int64_t n, int64_t c) {
    for (int64_t i = 0; i < n * c; i++)
        if (table[i] < -1 || table[i] >= n) return 0;
    return 1;
}

/* Per-column odd multipliers (a splitmix64 sequence): a signature hashes to the sum of its fields
 * times their column's multiplier, so the products of one row are independent (pipelined), not a
 * chain of dependent mixing steps. Filled once; never 0. */
#define MAX_COLUMNS 258
static uint64_t multiplier[MAX_COLUMNS];

static void init_multipliers(void) {
    uint64_t x = 0x5EC0C0DEull;
    for (int i = 0; i < MAX_COLUMNS; i++) {
        uint64_t z = (x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        multiplier[i] = (z ^ (z >> 31)) | 1;
    }
}

static inline uint64_t finish(uint64_t h) {
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    return h ^ (h >> 29);
}

static inline int32_t label_of(const int32_t *label, int32_t target) {
    return target < 0 ? -1 : label[target];
}

/* What a state's signature is made of: `kind` LIVE (which columns are alive), MOORE (its own
 * label, then its successors' labels on every column) or COLUMNS (its successors' labels on the
 * columns `cols`). */
enum kind { LIVE, MOORE, COLUMNS };

typedef struct {
    enum kind kind;
    const int32_t *table;
    int64_t c;
    const int32_t *label;
    const int32_t *cols;
    int64_t ncols;
} signature;

static uint64_t sig_hash(const signature *sg, int64_t s) {
    const int32_t *row = sg->table + s * sg->c;
    const int32_t *label = sg->label;
    uint64_t h = 0;
    switch (sg->kind) {
    case LIVE:
        for (int64_t k = 0; k < sg->c; k++) h += (uint64_t)(row[k] >= 0) * multiplier[k];
        break;
    case MOORE:
        h = (uint64_t)(uint32_t)(label[s] + 2) * multiplier[MAX_COLUMNS - 1];
        for (int64_t k = 0; k < sg->c; k++) {
            int32_t t = row[k];
            h += (uint64_t)(uint32_t)((t < 0 ? -1 : label[t]) + 2) * multiplier[k];
        }
        break;
    case COLUMNS:
        for (int64_t k = 0; k < sg->ncols; k++) {
            int32_t t = row[sg->cols[k]];
            h += (uint64_t)(uint32_t)((t < 0 ? -1 : label[t]) + 2) * multiplier[k];
        }
        break;
    }
    return finish(h);
}

static int sig_equal(const signature *sg, int64_t a, int64_t b) {
    const int32_t *ra = sg->table + a * sg->c, *rb = sg->table + b * sg->c;
    switch (sg->kind) {
    case LIVE:
        for (int64_t k = 0; k < sg->c; k++)
            if ((ra[k] >= 0) != (rb[k] >= 0)) return 0;
        return 1;
    case MOORE:
        if (sg->label[a] != sg->label[b]) return 0;
        for (int64_t k = 0; k < sg->c; k++)
            if (label_of(sg->label, ra[k]) != label_of(sg->label, rb[k])) return 0;
        return 1;
    case COLUMNS:
        for (int64_t k = 0; k < sg->ncols; k++) {
            int64_t col = sg->cols[k];
            if (label_of(sg->label, ra[col]) != label_of(sg->label, rb[col])) return 0;
        }
        return 1;
    }
    return 0;
}

/* group[i] for each state states[i]: groups of equal signature, numbered 0.. in order of first
 * occurrence; returns the number of groups (or ERR_MEMORY). `slots` is scratch of at least
 * 2 * m entries rounded up to a power of two (the caller sizes it once for its largest m). */
static int64_t group_states(const signature *sg, const int64_t *states, int64_t m, int64_t *group,
                            int64_t *slots, int64_t nslots) {
    int64_t size = 1;
    while (size < 2 * m) size <<= 1;
    if (size > nslots) return ERR_MEMORY;
    int64_t *rep = slots;  /* slot -> index i of its group's first state, -1 empty */
    for (int64_t j = 0; j < size; j++) rep[j] = -1;
    int64_t groups = 0;
    for (int64_t i = 0; i < m; i++) {
        int64_t s = states ? states[i] : i;
        uint64_t h = sig_hash(sg, s);
        int64_t j = (int64_t)(h & (uint64_t)(size - 1));
        for (;;) {
            int64_t r = rep[j];
            if (r < 0) {
                rep[j] = i;
                group[i] = groups++;
                break;
            }
            if (sig_equal(sg, states ? states[r] : r, s)) {
                group[i] = group[r];
                break;
            }
            j = (j + 1) & (size - 1);
        }
    }
    return groups;
}

static int64_t pow2_at_least(int64_t x) {
    int64_t p = 1;
    while (p < x) p <<= 1;
    return p;
}

/* Renumber labels by first occurrence over states 0..n-1; returns how many there are. */
static int64_t renumber(int32_t *label, int64_t n, int64_t num_labels, int32_t *out) {
    int32_t *map = malloc(sizeof(int32_t) * (size_t)(num_labels > 0 ? num_labels : 1));
    if (!map) return ERR_MEMORY;
    for (int64_t i = 0; i < num_labels; i++) map[i] = -1;
    int32_t next = 0;
    for (int64_t s = 0; s < n; s++) {
        int32_t l = label[s];
        if (map[l] < 0) map[l] = next++;
        out[s] = map[l];
    }
    free(map);
    return next;
}

/* Moore's refinement of the live-columns partition, at most `rounds` rounds (stopping early when a
 * round splits nothing). Incremental, as in `_moore_classes`: a round regroups only predecessors
 * of states whose label changed in the round before (no other state's signature changed). In a
 * class made only of candidates, the largest group keeps the label, so an unsplit class moves no
 * state; every other group gets a fresh label. */
int64_t sgc_moore_classes(const int32_t *table, int64_t n, int64_t c, int64_t rounds, double deadline,
                          int32_t *out) {
    if (n <= 0) return 0;
    if (c < 0 || c > MAX_COLUMNS - 1 || !table_ok(table, n, c)) return ERR_TABLE;
    init_multipliers();
    int64_t status = ERR_MEMORY;
    int64_t nslots = pow2_at_least(2 * n);
    int64_t cap = 2 * n;  /* label capacity: grows when a round hands out more fresh labels */
    int32_t *label = malloc(sizeof(int32_t) * (size_t)n);
    int64_t *cand = malloc(sizeof(int64_t) * (size_t)n);
    int64_t *group = malloc(sizeof(int64_t) * (size_t)n);
    int64_t *slots = malloc(sizeof(int64_t) * (size_t)nslots);
    int64_t *moved = malloc(sizeof(int64_t) * (size_t)n);
    int64_t *preds_ptr = calloc((size_t)n + 1, sizeof(int64_t));
    int64_t *stamp = malloc(sizeof(int64_t) * (size_t)n);
    int64_t *sizes = calloc((size_t)cap, sizeof(int64_t));
    int64_t *cand_count = calloc((size_t)cap, sizeof(int64_t));
    int64_t *keeper = malloc(sizeof(int64_t) * (size_t)cap);
    int64_t *group_size = NULL, *group_label = NULL, *fresh = NULL;
    int32_t *preds = NULL;
    if (!label || !cand || !group || !slots || !moved || !preds_ptr || !stamp || !sizes || !cand_count || !keeper)
        goto done;
    /* round 0: which columns are alive */
    signature live = {LIVE, table, c, NULL, NULL, 0};
    int64_t num_labels = group_states(&live, NULL, n, group, slots, nslots);
    if (num_labels < 0) goto done;
    for (int64_t s = 0; s < n; s++) {
        label[s] = (int32_t)group[s];
        sizes[group[s]]++;
    }
    /* predecessors, one edge per (source, target) pair */
    for (int64_t s = 0; s < n; s++) stamp[s] = -1;
    for (int64_t s = 0; s < n; s++)
        for (int64_t k = 0; k < c; k++) {
            int32_t t = table[s * c + k];
            if (t >= 0 && stamp[t] != s) {
                stamp[t] = s;
                preds_ptr[t + 1]++;
            }
        }
    for (int64_t t = 0; t < n; t++) preds_ptr[t + 1] += preds_ptr[t];
    preds = malloc(sizeof(int32_t) * (size_t)(preds_ptr[n] > 0 ? preds_ptr[n] : 1));
    group_size = malloc(sizeof(int64_t) * (size_t)n);
    group_label = malloc(sizeof(int64_t) * (size_t)n);
    fresh = malloc(sizeof(int64_t) * (size_t)n);
    if (!preds || !group_size || !group_label || !fresh) goto done;
    {
        int64_t *fill = moved;  /* scratch: next free slot per target */
        for (int64_t t = 0; t < n; t++) fill[t] = preds_ptr[t], stamp[t] = -1;
        for (int64_t s = 0; s < n; s++)
            for (int64_t k = 0; k < c; k++) {
                int32_t t = table[s * c + k];
                if (t >= 0 && stamp[t] != s) {
                    stamp[t] = s;
                    preds[fill[t]++] = (int32_t)s;
                }
            }
    }
    for (int64_t s = 0; s < n; s++) cand[s] = s, stamp[s] = -1;
    int64_t ncand = n;
    signature moore = {MOORE, table, c, label, NULL, 0};
    for (int64_t round = 1; round <= rounds && ncand > 0; round++) {
        if (past(deadline)) {
            status = ERR_DEADLINE;
            goto done;
        }
        int64_t ng = group_states(&moore, cand, ncand, group, slots, nslots);
        if (ng < 0) goto done;
        for (int64_t g = 0; g < ng; g++) group_size[g] = 0;
        for (int64_t i = 0; i < ncand; i++) {
            group_size[group[i]]++;
            group_label[group[i]] = label[cand[i]];
        }
        if (num_labels + ng > cap) {  /* room for every group's fresh label */
            int64_t grown = 2 * (num_labels + ng);
            int64_t *a = realloc(sizes, sizeof(int64_t) * (size_t)grown);
            if (!a) goto done;
            sizes = a;
            int64_t *b = realloc(cand_count, sizeof(int64_t) * (size_t)grown);
            if (!b) goto done;
            cand_count = b;
            int64_t *d = realloc(keeper, sizeof(int64_t) * (size_t)grown);
            if (!d) goto done;
            keeper = d;
            memset(sizes + cap, 0, sizeof(int64_t) * (size_t)(grown - cap));
            memset(cand_count + cap, 0, sizeof(int64_t) * (size_t)(grown - cap));
            cap = grown;
        }
        /* per old label: how many candidates it has, and its largest group (lowest id on ties) */
        for (int64_t g = 0; g < ng; g++) keeper[group_label[g]] = -1;
        for (int64_t g = 0; g < ng; g++) {
            int64_t l = group_label[g];
            cand_count[l] += group_size[g];
            if (keeper[l] < 0 || group_size[g] > group_size[keeper[l]]) keeper[l] = g;
        }
        for (int64_t g = 0; g < ng; g++) {
            int64_t l = group_label[g];
            int keeps = keeper[l] == g && cand_count[l] == sizes[l];
            fresh[g] = keeps ? -1 : num_labels++;
        }
        for (int64_t g = 0; g < ng; g++) {
            cand_count[group_label[g]] = 0;
            if (fresh[g] >= 0) {
                sizes[group_label[g]] -= group_size[g];
                sizes[fresh[g]] = group_size[g];
            }
        }
        int64_t nmoved = 0;  /* (every signature was read above: labels change only now) */
        for (int64_t i = 0; i < ncand; i++)
            if (fresh[group[i]] >= 0) {
                label[cand[i]] = (int32_t)fresh[group[i]];
                moved[nmoved++] = cand[i];
            }
        if (nmoved == 0) break;
        /* the next round's candidates: predecessors of the states that moved, each once */
        ncand = 0;
        for (int64_t i = 0; i < nmoved; i++) {
            int64_t t = moved[i];
            for (int64_t e = preds_ptr[t]; e < preds_ptr[t + 1]; e++) {
                int32_t p = preds[e];
                if (stamp[p] != round) {
                    stamp[p] = round;
                    cand[ncand++] = p;
                }
            }
        }
    }
    status = renumber(label, n, num_labels, out);
done:
    free(label), free(cand), free(group), free(slots), free(moved), free(preds_ptr), free(stamp);
    free(sizes), free(cand_count), free(keeper), free(group_size), free(group_label), free(fresh), free(preds);
    return status;
}

/* `_positional_classes`: one class at the last level, then per level d (backwards) the states
 * grouped by their successors' level-(d+1) labels on level d's columns
 * (`cols[col_ptr[d]:col_ptr[d+1]]`). */
int64_t sgc_positional_classes(const int32_t *table, int64_t n, int64_t c, const int32_t *cols,
                               const int64_t *col_ptr, int64_t levels, double deadline, int32_t *out) {
    if (n <= 0) return 0;
    if (c < 0 || c > MAX_COLUMNS - 1 || !table_ok(table, n, c)) return ERR_TABLE;
    init_multipliers();
    for (int64_t i = 0; i < col_ptr[levels]; i++)
        if (cols[i] < 0 || cols[i] >= c) return ERR_TABLE;
    int64_t status = ERR_MEMORY;
    int64_t nslots = pow2_at_least(2 * n);
    int32_t *label = calloc((size_t)n, sizeof(int32_t));
    int64_t *group = malloc(sizeof(int64_t) * (size_t)n);
    int64_t *slots = malloc(sizeof(int64_t) * (size_t)nslots);
    int64_t num = 1;
    if (!label || !group || !slots) goto done;
    for (int64_t d = levels - 1; d >= 0; d--) {
        if (past(deadline)) {
            status = ERR_DEADLINE;
            goto done;
        }
        signature sg = {COLUMNS, table, c, label, cols + col_ptr[d], col_ptr[d + 1] - col_ptr[d]};
        num = group_states(&sg, NULL, n, group, slots, nslots);
        if (num < 0) goto done;
        for (int64_t s = 0; s < n; s++) label[s] = (int32_t)group[s];
    }
    memcpy(out, label, sizeof(int32_t) * (size_t)n);
    status = num;
done:
    free(label), free(group), free(slots);
    return status;
}
