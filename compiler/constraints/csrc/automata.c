/* The constraint compiler's hottest loops in C (loaded by compiler/constraints/native.py).
 *
 * Each function is the twin of numpy code that stays as the path without a compiler, and gives
 * exactly its output, so the two paths build identical automata and token indexes:
 *   sgc_moore_classes, sgc_positional_classes  token_index._moore_classes / _positional_classes:
 *       label a DFA's states so that equal labels need one token-index row; labels numbered by
 *       first occurrence (state 0's label is 0, the next new label 1, ...), as numpy numbers them;
 *   sgc_dense_walk   token_index._dense_walk: the tokens of a vocabulary trie each state allows;
 *   sgc_product      automaton._product: the product construction, states numbered as numpy does;
 *   sgc_trim         automaton.trim's two reachability searches.
 * Tables are int32 [n, c] with -1 for the dead state.
 *
 * Grouping is exact: states are hashed by their signature, and a hash bucket's states are
 * compared field by field with the bucket's first state before they join it.
 *
 * Every function returns a count (>= 0) or a negative status:
 *   -1  out of memory;  -2  past the deadline (CLOCK_MONOTONIC seconds; <= 0: none);
 *   -3  a table entry or index out of range (never read past it);
 *   -4  more states than the caller's limit (`sgc_product`);
 *   -5  the memory it needs (written to `*needed`) is over `memory_budget` bytes.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ERR_MEMORY (-1)
#define ERR_DEADLINE (-2)
#define ERR_TABLE (-3)
#define ERR_STATES (-4)
#define ERR_BUDGET (-5)
#define MOORE_BYTES_PER_STATE 148  /* the arrays below, per state (hash slots: up to 4 per state) */

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
 * chain of dependent mixing steps. Never 0; filled by each entry point that hashes (258 values). */
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
        for (int64_t k = 0; k < sg->c; k++) h += (uint64_t)(uint32_t)(label_of(label, row[k]) + 2) * multiplier[k];
        break;
    case COLUMNS:
        for (int64_t k = 0; k < sg->ncols; k++)
            h += (uint64_t)(uint32_t)(label_of(label, row[sg->cols[k]]) + 2) * multiplier[k];
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

static int64_t pow2_at_least(int64_t x) {
    int64_t p = 1;
    while (p < x) p <<= 1;
    return p;
}

/* group[i] for each state states[i]: groups of equal signature, numbered 0.. in order of first
 * occurrence; returns the number of groups (or ERR_MEMORY). `slots` is scratch of at least
 * 2 * m entries rounded up to a power of two (the caller sizes it once for its largest m). */
static int64_t group_states(const signature *sg, const int64_t *states, int64_t m, int64_t *group,
                            int64_t *slots, int64_t nslots) {
    int64_t size = pow2_at_least(2 * m);
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

/* Predecessor lists of a table as CSR, one edge per (source, target) pair, in two steps so that a
 * caller can weigh the lists' memory before it allocates them: `count_preds` fills `ptr` (n + 1
 * entries, zeroed by the caller) with the lists' bounds, `fill_preds` writes the lists into
 * `preds` (ptr[n] entries). `stamp` and `next` are scratch of n entries. */
static void count_preds(const int32_t *table, int64_t n, int64_t c, int64_t *ptr, int64_t *stamp) {
    for (int64_t s = 0; s < n; s++) stamp[s] = -1;
    for (int64_t s = 0; s < n; s++)
        for (int64_t k = 0; k < c; k++) {
            int32_t t = table[s * c + k];
            if (t >= 0 && stamp[t] != s) stamp[t] = s, ptr[t + 1]++;
        }
    for (int64_t t = 0; t < n; t++) ptr[t + 1] += ptr[t];
}

static void fill_preds(const int32_t *table, int64_t n, int64_t c, const int64_t *ptr, int64_t *stamp,
                       int64_t *next, int32_t *preds) {
    for (int64_t t = 0; t < n; t++) next[t] = ptr[t], stamp[t] = -1;
    for (int64_t s = 0; s < n; s++)
        for (int64_t k = 0; k < c; k++) {
            int32_t t = table[s * c + k];
            if (t >= 0 && stamp[t] != s) stamp[t] = s, preds[next[t]++] = (int32_t)s;
        }
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
                          int64_t memory_budget, int64_t *needed, int32_t *out) {
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
    count_preds(table, n, c, preds_ptr, stamp);
    *needed = MOORE_BYTES_PER_STATE * n + 4 * preds_ptr[n];
    if (*needed > memory_budget) {
        status = ERR_BUDGET;
        goto done;
    }
    preds = malloc(sizeof(int32_t) * (size_t)(preds_ptr[n] > 0 ? preds_ptr[n] : 1));
    group_size = malloc(sizeof(int64_t) * (size_t)n);
    group_label = malloc(sizeof(int64_t) * (size_t)n);
    fresh = malloc(sizeof(int64_t) * (size_t)n);
    if (!preds || !group_size || !group_label || !fresh) goto done;
    fill_preds(table, n, c, preds_ptr, stamp, moved, preds);  /* (`moved` is free until round 1) */
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

/* The token index's dense walk (`token_index._dense_walk`): which tokens of a vocabulary trie each
 * of `g` states allows, as bit-packed rows (`masks`, [g, ceil(vocab/8)], zeroed by the caller;
 * bit t of row i: token t's bytes stay alive from states[i]) and per-row token counts.
 *
 * The trie is walked once, depth first, for all the states together: a node's bytes are read
 * once per batch, and only the states still alive at a node go on into its subtree (kept as a
 * compact list per depth). Every index is checked before it is used: the trie's arrays once per
 * call, each transition as it is read (the table is not scanned whole: a batch reads a corner). */
typedef struct {
    const int32_t *table;
    int64_t n, c;
    const int32_t *node_cls;
    const int64_t *child_lo, *child_hi, *end_ptr, *end_tokens;
    uint8_t *masks;
    int64_t words;
    int64_t *counts;
    int64_t **idx, **st;  /* per depth: the alive states' row indices and current states */
    int64_t max_depth;
    int64_t visits;
    double deadline;
    int status;
} walk;

static void visit(walk *w, int64_t node, int64_t depth, const int64_t *idx, const int64_t *st, int64_t m) {
    if (w->status) return;
    if (depth >= w->max_depth) {  /* deeper than the trie says it is: refuse, never overrun */
        w->status = ERR_TABLE;
        return;
    }
    if ((++w->visits & 4095) == 0 && past(w->deadline)) {
        w->status = ERR_DEADLINE;
        return;
    }
    int64_t *nidx = w->idx[depth], *nst = w->st[depth];
    int64_t cls = w->node_cls[node], alive = 0;
    for (int64_t k = 0; k < m; k++) {
        int32_t t = w->table[st[k] * w->c + cls];
        if (t >= w->n) {
            w->status = ERR_TABLE;
            return;
        }
        if (t >= 0) {
            nidx[alive] = idx[k];
            nst[alive++] = t;
        }
    }
    if (alive == 0) return;
    for (int64_t e = w->end_ptr[node]; e < w->end_ptr[node + 1]; e++) {
        int64_t token = w->end_tokens[e];
        for (int64_t k = 0; k < alive; k++) {
            w->masks[nidx[k] * w->words + (token >> 3)] |= (uint8_t)(1u << (token & 7));
            w->counts[nidx[k]]++;
        }
    }
    for (int64_t child = w->child_lo[node]; child < w->child_hi[node]; child++)
        visit(w, child, depth + 1, nidx, nst, alive);
}

int64_t sgc_dense_walk(const int32_t *table, int64_t n, int64_t c, const int32_t *node_cls,
                       const int64_t *child_lo, const int64_t *child_hi, const int64_t *end_ptr,
                       const int64_t *end_tokens, int64_t num_nodes, int64_t depth,
                       const int64_t *start_nodes, int64_t num_start, const int64_t *states, int64_t g,
                       int64_t vocab_size, uint8_t *masks, int64_t *counts, double deadline) {
    if (g <= 0) return 0;
    if (c < 1 || depth < 0 || end_ptr[0] != 0) return ERR_TABLE;
    for (int64_t i = 0; i < g; i++)
        if (states[i] < 0 || states[i] >= n) return ERR_TABLE;
    for (int64_t i = 0; i < num_start; i++)
        if (start_nodes[i] < 0 || start_nodes[i] >= num_nodes) return ERR_TABLE;
    for (int64_t v = 0; v < num_nodes; v++) {
        if (node_cls[v] < 0 || node_cls[v] >= c || child_lo[v] < 0 || child_lo[v] > child_hi[v]
            || child_hi[v] > num_nodes || end_ptr[v + 1] < end_ptr[v])
            return ERR_TABLE;
    }
    for (int64_t e = 0; e < end_ptr[num_nodes]; e++)
        if (end_tokens[e] < 0 || end_tokens[e] >= vocab_size) return ERR_TABLE;
    walk w = {table, n, c, node_cls, child_lo, child_hi, end_ptr, end_tokens, masks, (vocab_size + 7) / 8,
              counts, NULL, NULL, depth + 1, 0, deadline, 0};
    int64_t status = ERR_MEMORY;
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)g);
    w.idx = calloc((size_t)w.max_depth, sizeof(int64_t *));
    w.st = calloc((size_t)w.max_depth, sizeof(int64_t *));
    if (!rows || !w.idx || !w.st) goto done;
    for (int64_t d = 0; d < w.max_depth; d++) {
        w.idx[d] = malloc(sizeof(int64_t) * (size_t)g);
        w.st[d] = malloc(sizeof(int64_t) * (size_t)g);
        if (!w.idx[d] || !w.st[d]) goto done;
    }
    for (int64_t i = 0; i < g; i++) rows[i] = i, counts[i] = 0;
    for (int64_t r = 0; r < num_start && !w.status; r++) visit(&w, start_nodes[r], 0, rows, states, g);
    status = w.status ? w.status : g;
done:
    if (w.idx)
        for (int64_t d = 0; d < w.max_depth; d++) free(w.idx[d]);
    if (w.st)
        for (int64_t d = 0; d < w.max_depth; d++) free(w.st[d]);
    free(w.idx), free(w.st), free(rows);
    return status;
}

/* The product construction of `automaton._product`, breadth first, numbering pairs exactly as
 * the numpy code does: level by level, each level's new pairs in increasing key order. A pair is
 * the key `ia * wb + ib` of rows of `ta` / `tb` ([na + 1, k] and [nb + 1, k], row 0 the dead state,
 * targets shifted by one: 0 is dead). `mode` 0: both alive ("and"), 1: either ("or"), 2: `a` alive
 * ("minus"). The result stays in a `product` until the caller copies it out and frees it. */
typedef struct {
    int32_t *rows;  /* [count, k]: target ids, -1 dead */
    int64_t *keys;  /* [count] */
    int64_t count, cap;
} product;

/* Whether a pair of targets (0: dead) is a state of the product in `mode` (see above). */
static inline int pair_live(int32_t mode, int64_t xa, int64_t xb) {
    return mode == 0 ? (xa > 0 && xb > 0) : mode == 1 ? (xa > 0 || xb > 0) : xa > 0;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* open addressing map from pair key to state id (or -1 while a level's new pairs are collected) */
typedef struct {
    int64_t *key;
    int32_t *id;
    int64_t size, used;
} pair_map;

static int64_t *map_slot(pair_map *m, int64_t key) {
    uint64_t h = finish((uint64_t)key * 0x9E3779B97F4A7C15ull);
    int64_t j = (int64_t)(h & (uint64_t)(m->size - 1));
    while (m->key[j] != -1 && m->key[j] != key) j = (j + 1) & (m->size - 1);
    return &m->key[j];
}

static int map_grow(pair_map *m) {
    pair_map bigger = {malloc(sizeof(int64_t) * (size_t)(2 * m->size)), malloc(sizeof(int32_t) * (size_t)(2 * m->size)),
                       2 * m->size, m->used};
    if (!bigger.key || !bigger.id) {
        free(bigger.key), free(bigger.id);
        return 0;
    }
    for (int64_t j = 0; j < bigger.size; j++) bigger.key[j] = -1;
    for (int64_t j = 0; j < m->size; j++)
        if (m->key[j] != -1) {
            int64_t *slot = map_slot(&bigger, m->key[j]);
            *slot = m->key[j];
            bigger.id[slot - bigger.key] = m->id[j];
        }
    free(m->key), free(m->id);
    *m = bigger;
    return 1;
}

/* Pair key -> state id: a dense array when the pair space is small (one load per lookup), else
 * the hash map. A cell is ABSENT, or SEEN (a new pair of the current level, not numbered yet), or
 * the pair's id. */
#define DENSE_PAIR_IDS (1 << 24)
#define ABSENT (-2)
#define SEEN (-1)

typedef struct {
    int32_t *dense;  /* [space] or NULL */
    pair_map map;
} pair_ids;

/* The id cell of `key`, inserted (as SEEN, `*fresh` = 1) if absent; NULL when out of memory. */
static int32_t *ids_cell(pair_ids *ids, int64_t key, int *fresh) {
    *fresh = 0;
    if (ids->dense) {
        int32_t *cell = &ids->dense[key];
        if (*cell == ABSENT) *cell = SEEN, *fresh = 1;
        return cell;
    }
    pair_map *m = &ids->map;
    int64_t *slot = map_slot(m, key);
    if (*slot == -1) {  /* absent: make room first (only an insert grows the map) */
        if (2 * (m->used + 1) > m->size) {
            if (!map_grow(m)) return NULL;
            slot = map_slot(m, key);
        }
        *slot = key, m->id[slot - m->key] = SEEN, m->used++, *fresh = 1;
    }
    return &m->id[slot - m->key];
}

void sgc_product_free(product *p) {
    if (p) free(p->rows), free(p->keys), free(p);
}

int64_t sgc_product_copy(const product *p, int32_t *rows, int64_t *keys, int64_t k) {
    memcpy(rows, p->rows, sizeof(int32_t) * (size_t)(p->count * k));
    memcpy(keys, p->keys, sizeof(int64_t) * (size_t)p->count);
    return p->count;
}

/* Returns the product (its `count` states), or NULL with `*status` set: ERR_MEMORY, ERR_DEADLINE,
 * ERR_TABLE (a target outside its table), ERR_STATES (more than `max_states`; `*status_count`
 * says how many the next level would make, for the caller's error message) or ERR_BUDGET (the
 * rows would grow over `memory_budget` bytes; `*status_count` says how many). The rows grow by
 * half at a time and are cut to size at the end: the caller copies them out while they are held. */
product *sgc_product(const int32_t *ta, int64_t na, const int32_t *tb, int64_t nb, int64_t k, int64_t start,
                     int32_t mode, int64_t max_states, int64_t memory_budget, double deadline, int64_t *status,
                     int64_t *status_count) {
    int64_t wb = nb + 1;
    product *p = calloc(1, sizeof(product));
    pair_ids ids = {NULL, {NULL, NULL, 1024, 0}};
    int64_t *fresh = NULL;
    int64_t nfresh = 0, fresh_cap = 1024;
    int is_new;
    *status = ERR_MEMORY;
    fresh = malloc(sizeof(int64_t) * (size_t)fresh_cap);
    if (!p || !fresh) goto fail;
    for (int64_t i = 0; i < (na + 1) * k; i++)
        if (ta[i] < 0 || ta[i] > na) goto bad_table;
    for (int64_t i = 0; i < (nb + 1) * k; i++)
        if (tb[i] < 0 || tb[i] > nb) goto bad_table;
    int64_t space = (na + 1) * wb;
    if (start < 0 || start >= space) goto bad_table;
    if (space <= DENSE_PAIR_IDS) {
        ids.dense = malloc(sizeof(int32_t) * (size_t)space);
        if (!ids.dense) goto fail;
        for (int64_t i = 0; i < space; i++) ids.dense[i] = ABSENT;
    } else {
        ids.map.key = malloc(sizeof(int64_t) * (size_t)ids.map.size);
        ids.map.id = malloc(sizeof(int32_t) * (size_t)ids.map.size);
        if (!ids.map.key || !ids.map.id) goto fail;
        for (int64_t j = 0; j < ids.map.size; j++) ids.map.key[j] = -1;
    }
    p->cap = 1024;
    p->rows = malloc(sizeof(int32_t) * (size_t)(p->cap * k));
    p->keys = malloc(sizeof(int64_t) * (size_t)p->cap);
    if (!p->rows || !p->keys) goto fail;
    int32_t *cell = ids_cell(&ids, start, &is_new);
    if (!cell) goto fail;
    *cell = 0;
    p->keys[0] = start;
    p->count = 1;
    int64_t level_start = 0;  /* the frontier: states level_start .. count - 1 (keys in p->keys) */
    while (level_start < p->count) {
        if (past(deadline)) {
            *status = ERR_DEADLINE;
            goto fail;
        }
        int64_t level_end = p->count;
        nfresh = 0;
        /* pass 1: the level's successors not seen before, each once */
        for (int64_t s = level_start; s < level_end; s++) {
            int64_t key = p->keys[s], ia = key / wb, ib = key % wb, last = -1;
            for (int64_t j = 0; j < k; j++) {
                int64_t xa = ta[ia * k + j], xb = tb[ib * k + j];
                if (!pair_live(mode, xa, xb)) continue;
                int64_t succ = xa * wb + xb;
                if (succ == last) continue;  /* (a row's classes mostly lead to a few pairs) */
                last = succ;
                if (!ids_cell(&ids, succ, &is_new)) goto fail;
                if (is_new) {
                    if (nfresh == fresh_cap) {
                        int64_t *grown = realloc(fresh, sizeof(int64_t) * (size_t)(2 * fresh_cap));
                        if (!grown) goto fail;
                        fresh = grown, fresh_cap *= 2;
                    }
                    fresh[nfresh++] = succ;
                }
            }
        }
        if (nfresh) {
            if (p->count + nfresh > max_states) {
                *status = ERR_STATES;
                *status_count = p->count + nfresh;
                goto fail;
            }
            qsort(fresh, (size_t)nfresh, sizeof(int64_t), cmp_i64);
            if (p->count + nfresh > p->cap) {
                int64_t cap = p->cap;
                while (cap < p->count + nfresh) cap += cap / 2;
                if ((int64_t)(sizeof(int32_t) * k + sizeof(int64_t)) * cap > memory_budget) {
                    *status = ERR_BUDGET;
                    *status_count = (int64_t)(sizeof(int32_t) * k + sizeof(int64_t)) * cap;
                    goto fail;
                }
                int32_t *rows = realloc(p->rows, sizeof(int32_t) * (size_t)(cap * k));
                if (!rows) goto fail;
                p->rows = rows;
                int64_t *keys = realloc(p->keys, sizeof(int64_t) * (size_t)cap);
                if (!keys) goto fail;
                p->keys = keys, p->cap = cap;
            }
            for (int64_t i = 0; i < nfresh; i++) {
                *ids_cell(&ids, fresh[i], &is_new) = (int32_t)(p->count + i);  /* present: no growth */
                p->keys[p->count + i] = fresh[i];
            }
        }
        /* pass 2: the level's rows, every successor now numbered */
        for (int64_t s = level_start; s < level_end; s++) {
            int64_t key = p->keys[s], ia = key / wb, ib = key % wb;
            int32_t *row = p->rows + s * k;
            int64_t last = -1;
            int32_t last_id = -1;
            for (int64_t j = 0; j < k; j++) {
                int64_t xa = ta[ia * k + j], xb = tb[ib * k + j];
                if (!pair_live(mode, xa, xb)) {
                    row[j] = -1;
                    continue;
                }
                int64_t succ = xa * wb + xb;
                if (succ != last) last = succ, last_id = *ids_cell(&ids, succ, &is_new);
                row[j] = last_id;
            }
        }
        p->count += nfresh;
        level_start = level_end;
    }
    free(ids.dense), free(ids.map.key), free(ids.map.id), free(fresh);
    int32_t *rows = realloc(p->rows, sizeof(int32_t) * (size_t)(p->count * k));  /* (shrinks in place) */
    if (rows) p->rows = rows;
    *status = p->count;
    return p;
bad_table:
    *status = ERR_TABLE;
fail:
    free(ids.dense), free(ids.map.key), free(ids.map.id), free(fresh);
    sgc_product_free(p);
    return NULL;
}

/* `automaton.trim`'s two searches: `keep[s]` = 1 iff s is reachable from `initial` through states
 * that can reach an accepting state (the rest is the caller's renumbering). Returns how many
 * states are kept (0 when the initial state cannot accept anything). */
int64_t sgc_trim(const int32_t *table, int64_t n, int64_t c, const uint8_t *accepting, int64_t initial,
                 double deadline, uint8_t *keep) {
    if (n <= 0) return 0;
    if (c < 0 || initial < 0 || initial >= n || !table_ok(table, n, c)) return ERR_TABLE;
    int64_t status = ERR_MEMORY;
    int64_t *ptr = calloc((size_t)n + 1, sizeof(int64_t));
    int64_t *stamp = malloc(sizeof(int64_t) * (size_t)n);
    int64_t *queue = malloc(sizeof(int64_t) * (size_t)n);
    uint8_t *alive = calloc((size_t)n, 1);
    int32_t *preds = NULL;
    if (!ptr || !stamp || !queue || !alive) goto done;
    count_preds(table, n, c, ptr, stamp);
    preds = malloc(sizeof(int32_t) * (size_t)(ptr[n] > 0 ? ptr[n] : 1));
    if (!preds) goto done;
    fill_preds(table, n, c, ptr, stamp, queue, preds);  /* (`queue` is free until the searches) */
    if (past(deadline)) {
        status = ERR_DEADLINE;
        goto done;
    }
    /* backward from the accepting states */
    int64_t head = 0, tail = 0;
    for (int64_t s = 0; s < n; s++)
        if (accepting[s]) alive[s] = 1, queue[tail++] = s;
    while (head < tail) {
        int64_t t = queue[head++];
        for (int64_t e = ptr[t]; e < ptr[t + 1]; e++)
            if (!alive[preds[e]]) alive[preds[e]] = 1, queue[tail++] = preds[e];
    }
    memset(keep, 0, (size_t)n);
    int64_t kept = 0;
    if (alive[initial]) {  /* forward from the initial state, through alive states */
        head = tail = 0;
        keep[initial] = 1, queue[tail++] = initial, kept = 1;
        while (head < tail) {
            int64_t s = queue[head++];
            for (int64_t k = 0; k < c; k++) {
                int32_t t = table[s * c + k];
                if (t >= 0 && alive[t] && !keep[t]) keep[t] = 1, queue[tail++] = t, kept++;
            }
        }
    }
    status = kept;
done:
    free(ptr), free(stamp), free(queue), free(alive), free(preds);
    return status;
}
