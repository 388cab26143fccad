//! Optimal one-to-one assignment of tracks to detections.
//!
//! [`hungarian`] solves the dense rectangular assignment problem in O(n²·m) (shortest
//! augmenting paths with row and column potentials). Trackers call [`assign`] instead, which
//! takes only the gated pairs: pairs that are not candidates can never match, so the bipartite
//! graph falls apart into connected components (objects far apart never compete) and each
//! component is solved on its own small matrix. A thousand spread-out objects are then a
//! thousand 1×1 problems, not one 1000×1000 one.

/// A (track, detection) pair that passed the tracker's gate, with its cost (lower is better).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub track: usize,
    pub detection: usize,
    pub cost: f64,
}

/// Chooses the matching among `candidates` that minimises the total of `cost − limit` over
/// matched pairs. That is the same as charging `limit / 2` for every track and every detection
/// left unmatched: a pair is worth matching when its cost is below `limit`, and one good pair
/// beats two mediocre ones when that is cheaper overall (a maximum-cardinality matching would
/// not). `limit` is the stage's gate, the largest cost any candidate may have; a candidate at
/// the limit still matches when nothing competes for it.
///
/// Returns `(track, detection)` pairs sorted by track. `tracks` and `detections` bound the
/// indices used in `candidates`.
pub fn assign(
    tracks: usize,
    detections: usize,
    candidates: &[Candidate],
    limit: f64,
) -> Vec<(usize, usize)> {
    // Every candidate must be strictly better than leaving its ends unmatched.
    const MARGIN: f64 = 1e-9;
    let mut forest = DisjointSets::new(tracks + detections);
    for c in candidates {
        forest.union(c.track, tracks + c.detection);
    }
    // Group candidates by component, in order of first appearance (deterministic).
    let mut component_of_root = vec![usize::MAX; tracks + detections];
    let mut components: Vec<Vec<Candidate>> = Vec::new();
    for c in candidates {
        let root = forest.find(c.track);
        if component_of_root[root] == usize::MAX {
            component_of_root[root] = components.len();
            components.push(Vec::new());
        }
        components[component_of_root[root]].push(*c);
    }
    let mut local_row = vec![usize::MAX; tracks];
    let mut local_col = vec![usize::MAX; detections];
    let mut pairs = Vec::new();
    for component in components {
        if let [c] = component.as_slice() {
            if c.cost <= limit {
                pairs.push((c.track, c.detection));
            }
            continue;
        }
        let mut rows = Vec::new();
        let mut cols = Vec::new();
        for c in &component {
            if local_row[c.track] == usize::MAX {
                local_row[c.track] = rows.len();
                rows.push(c.track);
            }
            if local_col[c.detection] == usize::MAX {
                local_col[c.detection] = cols.len();
                cols.push(c.detection);
            }
        }
        // Non-candidates cost 0, i.e. the same as leaving both ends unmatched.
        let mut cost = vec![0.0; rows.len() * cols.len()];
        for c in &component {
            let cell = &mut cost[local_row[c.track] * cols.len() + local_col[c.detection]];
            *cell = f64::min(*cell, c.cost - limit - MARGIN);
        }
        for (r, col) in hungarian(&cost, rows.len(), cols.len())
            .into_iter()
            .enumerate()
        {
            if let Some(col) = col {
                if cost[r * cols.len() + col] < 0.0 {
                    pairs.push((rows[r], cols[col]));
                }
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

/// Minimum-cost assignment on a dense `rows × cols` matrix (row-major). Every row is assigned
/// when `rows <= cols`, every column otherwise. Returns, for each row, its column.
pub fn hungarian(cost: &[f64], rows: usize, cols: usize) -> Vec<Option<usize>> {
    assert_eq!(cost.len(), rows * cols, "cost matrix is not rows × cols");
    if rows <= cols {
        return hungarian_wide(cost, rows, cols)
            .into_iter()
            .map(Some)
            .collect();
    }
    // More rows than columns: solve the transpose and invert the answer.
    let mut transposed = vec![0.0; cost.len()];
    for r in 0..rows {
        for c in 0..cols {
            transposed[c * rows + r] = cost[r * cols + c];
        }
    }
    let mut row_to_col = vec![None; rows];
    for (c, r) in hungarian_wide(&transposed, cols, rows)
        .into_iter()
        .enumerate()
    {
        row_to_col[r] = Some(c);
    }
    row_to_col
}

/// The `rows <= cols` case. Rows are added one at a time; each addition finds a shortest
/// augmenting path (Dijkstra on reduced costs, which the potentials `u`, `v` keep
/// non-negative) from the new row to a free column and flips the matching along it.
fn hungarian_wide(cost: &[f64], rows: usize, cols: usize) -> Vec<usize> {
    // Index 0 of `v`, `owner` and `via` is a virtual column holding the row being added.
    let mut u = vec![0.0f64; rows + 1];
    let mut v = vec![0.0f64; cols + 1];
    // owner[j]: the row (1-based, 0 = none) matched to column j.
    let mut owner = vec![0usize; cols + 1];
    // via[j]: the previous column on the shortest path to column j.
    let mut via = vec![0usize; cols + 1];
    let mut slack = vec![0.0f64; cols + 1];
    let mut visited = vec![false; cols + 1];
    for row in 1..=rows {
        owner[0] = row;
        let mut col = 0;
        slack.fill(f64::INFINITY);
        visited.fill(false);
        loop {
            visited[col] = true;
            let r = owner[col];
            let mut delta = f64::INFINITY;
            let mut next = 0;
            for j in 1..=cols {
                if visited[j] {
                    continue;
                }
                let reduced = cost[(r - 1) * cols + (j - 1)] - u[r] - v[j];
                if reduced < slack[j] {
                    slack[j] = reduced;
                    via[j] = col;
                }
                if slack[j] < delta {
                    delta = slack[j];
                    next = j;
                }
            }
            for j in 0..=cols {
                if visited[j] {
                    u[owner[j]] += delta;
                    v[j] -= delta;
                } else {
                    slack[j] -= delta;
                }
            }
            col = next;
            if owner[col] == 0 {
                break;
            }
        }
        // Flip the path back to the virtual column.
        while col != 0 {
            let previous = via[col];
            owner[col] = owner[previous];
            col = previous;
        }
    }
    let mut row_to_col = vec![0; rows];
    for j in 1..=cols {
        if owner[j] != 0 {
            row_to_col[owner[j] - 1] = j - 1;
        }
    }
    row_to_col
}

/// Union-find with path halving.
struct DisjointSets {
    parent: Vec<usize>,
}

impl DisjointSets {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.parent[a.max(b)] = a.min(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator; the tests need variety, not quality.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Cheapest total over every injective row → column map (rows <= cols) by enumeration.
    fn brute_force_full(cost: &[f64], rows: usize, cols: usize) -> f64 {
        fn go(cost: &[f64], cols: usize, row: usize, rows: usize, used: &mut [bool]) -> f64 {
            if row == rows {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for c in 0..cols {
                if !used[c] {
                    used[c] = true;
                    let total = cost[row * cols + c] + go(cost, cols, row + 1, rows, used);
                    used[c] = false;
                    best = best.min(total);
                }
            }
            best
        }
        go(cost, cols, 0, rows, &mut vec![false; cols])
    }

    /// Cheapest total of `cost - limit` over every partial matching of the candidates.
    fn brute_force_partial(
        tracks: usize,
        detections: usize,
        candidates: &[Candidate],
        limit: f64,
    ) -> f64 {
        fn go(
            t: usize,
            tracks: usize,
            candidates: &[Candidate],
            limit: f64,
            used: &mut [bool],
        ) -> f64 {
            if t == tracks {
                return 0.0;
            }
            let mut best = go(t + 1, tracks, candidates, limit, used);
            for c in candidates.iter().filter(|c| c.track == t) {
                if !used[c.detection] {
                    used[c.detection] = true;
                    let total = c.cost - limit + go(t + 1, tracks, candidates, limit, used);
                    used[c.detection] = false;
                    best = best.min(total);
                }
            }
            best
        }
        go(0, tracks, candidates, limit, &mut vec![false; detections])
    }

    fn total(cost: &[f64], cols: usize, assignment: &[Option<usize>]) -> f64 {
        assignment
            .iter()
            .enumerate()
            .filter_map(|(r, c)| c.map(|c| cost[r * cols + c]))
            .sum()
    }

    #[test]
    fn hungarian_is_optimal_on_random_square_and_rectangular_matrices() {
        let mut rng = Lcg(7);
        for rows in 1..=6 {
            for cols in 1..=6 {
                for _ in 0..20 {
                    // Coarse values make ties, which is where greedy shortcuts go wrong.
                    let cost: Vec<f64> = (0..rows * cols)
                        .map(|_| (rng.next() * 8.0).floor())
                        .collect();
                    let assignment = hungarian(&cost, rows, cols);
                    let assigned: Vec<usize> = assignment.iter().flatten().copied().collect();
                    assert_eq!(assigned.len(), rows.min(cols));
                    let mut unique = assigned.clone();
                    unique.sort_unstable();
                    unique.dedup();
                    assert_eq!(unique.len(), assigned.len(), "a column used twice");
                    let expected = if rows <= cols {
                        brute_force_full(&cost, rows, cols)
                    } else {
                        let mut t = vec![0.0; cost.len()];
                        for r in 0..rows {
                            for c in 0..cols {
                                t[c * rows + r] = cost[r * cols + c];
                            }
                        }
                        brute_force_full(&t, cols, rows)
                    };
                    let got = total(&cost, cols, &assignment);
                    assert!(
                        (got - expected).abs() < 1e-9,
                        "{rows}x{cols} {cost:?}: {got} vs {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn gated_assignment_is_optimal_against_brute_force() {
        let mut rng = Lcg(11);
        for _ in 0..300 {
            let tracks = 1 + (rng.next() * 6.0) as usize;
            let detections = 1 + (rng.next() * 6.0) as usize;
            let mut candidates = Vec::new();
            for t in 0..tracks {
                for d in 0..detections {
                    if rng.next() < 0.5 {
                        candidates.push(Candidate {
                            track: t,
                            detection: d,
                            cost: rng.next() * 0.8,
                        });
                    }
                }
            }
            let pairs = assign(tracks, detections, &candidates, 0.8);
            let cost_of = |t: usize, d: usize| {
                candidates
                    .iter()
                    .find(|c| c.track == t && c.detection == d)
                    .map(|c| c.cost)
                    .expect("only candidates are matched")
            };
            let got: f64 = pairs.iter().map(|&(t, d)| cost_of(t, d) - 0.8).sum();
            let expected = brute_force_partial(tracks, detections, &candidates, 0.8);
            assert!((got - expected).abs() < 1e-6, "{candidates:?}: {pairs:?}");
            let mut dets: Vec<usize> = pairs.iter().map(|p| p.1).collect();
            dets.sort_unstable();
            dets.dedup();
            assert_eq!(dets.len(), pairs.len());
        }
    }

    #[test]
    fn one_good_pair_beats_two_poor_ones() {
        let c = |track, detection, cost| Candidate {
            track,
            detection,
            cost,
        };
        let candidates = [c(0, 0, 0.1), c(0, 1, 0.7), c(1, 0, 0.7)];
        assert_eq!(assign(2, 2, &candidates, 0.8), vec![(0, 0)]);
    }

    #[test]
    fn a_thousand_separate_objects_are_solved_quickly() {
        let n = 1000;
        // Each track overlaps its own detection well and its neighbour's a little.
        let mut candidates = Vec::new();
        for t in 0..n {
            candidates.push(Candidate {
                track: t,
                detection: t,
                cost: 0.1,
            });
            if t + 1 < n && t % 3 != 0 {
                candidates.push(Candidate {
                    track: t,
                    detection: t + 1,
                    cost: 0.6,
                });
            }
        }
        let pairs = assign(n, n, &candidates, 0.7);
        assert_eq!(pairs, (0..n).map(|i| (i, i)).collect::<Vec<_>>());
    }
}
