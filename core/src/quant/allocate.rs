//! Mixed-precision allocation: give each weight unit (a matrix, or matrices stacked into one
//! upload) its own width so the whole model meets a bit budget with the least measured error.
//!
//! Each unit comes with its measured error at each candidate width (the calibration-weighted
//! squared error of its quantized matrices, `Σ_c E[x_c²] Σ_r (W − Ŵ)²_rc`: what the layer's
//! output loses) and what each width costs in bits. Starting from every unit at its cheapest
//! width, the allocator repeatedly upgrades the unit whose next width removes the most error per
//! extra bit, while the budget allows (a greedy walk along each unit's convex hull of
//! error against bits).

/// One candidate width of a unit: its bits in all and the error it leaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// The width (bits per stored value: 2, 3, 4, 5, 6, 8).
    pub bits: u32,
    /// Stored bits of the unit at this width (codes, scales, offsets).
    pub cost: f64,
    /// Measured error at this width.
    pub error: f64,
}

/// A unit to allocate: its candidates in any order.
#[derive(Clone, Debug)]
pub struct Unit {
    /// Names of the tensors in the unit.
    pub names: Vec<String>,
    /// Candidate widths.
    pub choices: Vec<Choice>,
}

/// Picks one choice per unit with total cost at most `budget` (bits) and the least total error
/// the search finds (the greedy walk, with the few units whose steps are large against the
/// budget enumerated). Returns the chosen index into each unit's `choices`, or `None` when
/// even the cheapest choices exceed the budget (or a unit has no choice).
pub fn allocate(units: &[Unit], budget: f64) -> Option<Vec<usize>> {
    // Per unit, the lower convex hull of (cost, error) from the cheapest choice upward.
    let hulls: Vec<Vec<usize>> = units
        .iter()
        .map(|u| {
            let mut idx: Vec<usize> = (0..u.choices.len()).collect();
            idx.sort_by(|&a, &b| u.choices[a].cost.total_cmp(&u.choices[b].cost));
            let mut hull: Vec<usize> = Vec::new();
            for i in idx {
                let c = u.choices[i];
                // Drop choices that cost more without lowering the error.
                if hull.last().is_some_and(|&l| u.choices[l].error <= c.error) {
                    continue;
                }
                while hull.len() >= 2 {
                    let (a, b) = (
                        u.choices[hull[hull.len() - 2]],
                        u.choices[hull[hull.len() - 1]],
                    );
                    let slope_ab = (a.error - b.error) / (b.cost - a.cost).max(1e-12);
                    let slope_bc = (b.error - c.error) / (c.cost - b.cost).max(1e-12);
                    if slope_bc >= slope_ab {
                        hull.pop();
                    } else {
                        break;
                    }
                }
                hull.push(i);
            }
            hull
        })
        .collect();
    if hulls.iter().any(Vec::is_empty) {
        return None;
    }
    let cost = |k: usize, a: usize| units[k].choices[hulls[k][a]].cost;
    let error = |k: usize, a: usize| units[k].choices[hulls[k][a]].error;
    if (0..units.len()).map(|k| cost(k, 0)).sum::<f64>() > budget {
        return None;
    }
    // The greedy walk is near-optimal when every step is small against the budget; a unit whose
    // step takes a large share of it (a tied embedding is 20-60% of a small model) can be left
    // out only because smaller upgrades filled the budget first. So the few largest units are
    // enumerated (every hull point of each, at most 256 combinations) and the walk fills the
    // rest; the least total error wins.
    let step = |k: usize| {
        hulls[k]
            .windows(2)
            .map(|w| units[k].choices[w[1]].cost - units[k].choices[w[0]].cost)
            .fold(0.0, f64::max)
    };
    let mut by_step: Vec<usize> = (0..units.len())
        .filter(|&k| step(k) > budget / 16.0)
        .collect();
    by_step.sort_by(|&a, &b| step(b).total_cmp(&step(a)));
    let mut big = Vec::new();
    let mut combos = 1usize;
    for k in by_step {
        if combos * hulls[k].len() > 256 {
            break;
        }
        combos *= hulls[k].len();
        big.push(k);
    }
    let mut best: Option<(f64, Vec<usize>)> = None;
    for combo in 0..combos {
        let mut at = vec![0usize; units.len()];
        let mut locked = vec![false; units.len()];
        let mut c = combo;
        for &k in &big {
            at[k] = c % hulls[k].len();
            c /= hulls[k].len();
            locked[k] = true;
        }
        let mut total: f64 = (0..units.len()).map(|k| cost(k, at[k])).sum();
        if total > budget {
            continue;
        }
        loop {
            let mut pick: Option<(usize, f64, f64)> = None;
            for k in 0..units.len() {
                if locked[k] || at[k] + 1 >= hulls[k].len() {
                    continue;
                }
                let extra = cost(k, at[k] + 1) - cost(k, at[k]);
                if total + extra > budget {
                    continue;
                }
                let gain = (error(k, at[k]) - error(k, at[k] + 1)) / extra.max(1e-12);
                if pick.is_none_or(|(_, g, _)| gain > g) {
                    pick = Some((k, gain, extra));
                }
            }
            let Some((k, _, extra)) = pick else { break };
            at[k] += 1;
            total += extra;
        }
        let err: f64 = (0..units.len()).map(|k| error(k, at[k])).sum();
        if best.as_ref().is_none_or(|(e, _)| err < *e) {
            best = Some((err, at));
        }
    }
    best.map(|(_, at)| hulls.iter().zip(&at).map(|(h, &a)| h[a]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, errs: [f64; 3]) -> Unit {
        Unit {
            names: vec![name.into()],
            choices: [2, 3, 4]
                .iter()
                .zip(errs)
                .map(|(&bits, error)| Choice {
                    bits,
                    cost: f64::from(bits) * 100.0,
                    error,
                })
                .collect(),
        }
    }

    #[test]
    fn bits_go_where_they_remove_most_error() {
        let units = [
            unit("sensitive", [100.0, 30.0, 8.0]),
            unit("robust", [5.0, 2.0, 1.0]),
        ];
        // Cheapest: 400 bits. 500 allows one upgrade: the sensitive unit's.
        assert_eq!(allocate(&units, 500.0), Some(vec![1, 0]));
        assert_eq!(allocate(&units, 600.0), Some(vec![2, 0]));
        assert_eq!(allocate(&units, 800.0), Some(vec![2, 2]));
        assert_eq!(allocate(&units, 399.0), None);
    }

    #[test]
    fn a_large_unit_is_weighed_against_the_small_ones_it_would_displace() {
        // Upgrading the two small units first (better error per bit) leaves too little budget
        // for the large one, whose upgrade alone removes more error.
        let big = Unit {
            names: vec!["embedding".into()],
            choices: vec![
                Choice {
                    bits: 4,
                    cost: 400.0,
                    error: 35.0,
                },
                Choice {
                    bits: 8,
                    cost: 800.0,
                    error: 0.0,
                },
            ],
        };
        let small = |n: &str| Unit {
            names: vec![n.into()],
            choices: vec![
                Choice {
                    bits: 4,
                    cost: 100.0,
                    error: 10.0,
                },
                Choice {
                    bits: 8,
                    cost: 200.0,
                    error: 0.0,
                },
            ],
        };
        let units = [big, small("a"), small("b")];
        assert_eq!(allocate(&units, 1000.0), Some(vec![1, 0, 0]));
        // With room for everything, everything is upgraded.
        assert_eq!(allocate(&units, 1200.0), Some(vec![1, 1, 1]));
        // With room only for the small ones, they are upgraded.
        assert_eq!(allocate(&units, 899.0), Some(vec![0, 1, 1]));
    }

    #[test]
    fn dominated_choices_are_skipped() {
        // 3 bits is no better than 2: the walk jumps to 4.
        let units = [unit("a", [10.0, 10.0, 1.0])];
        assert_eq!(allocate(&units, 400.0), Some(vec![2]));
        assert_eq!(allocate(&units, 300.0), Some(vec![0]));
    }
}
