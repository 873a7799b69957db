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
    /// The width (bits per stored value: 2, 3, 4, 8).
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
/// the greedy walk finds. Returns the chosen index into each unit's `choices`, or `None` when
/// even the cheapest choices exceed the budget.
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
    let mut at = vec![0usize; units.len()];
    let mut total: f64 = units
        .iter()
        .zip(&hulls)
        .map(|(u, h)| h.first().map_or(0.0, |&i| u.choices[i].cost))
        .sum();
    if total > budget {
        return None;
    }
    loop {
        let mut best: Option<(usize, f64, f64)> = None;
        for (k, (u, h)) in units.iter().zip(&hulls).enumerate() {
            let Some(&next) = h.get(at[k] + 1) else {
                continue;
            };
            let cur = u.choices[h[at[k]]];
            let nx = u.choices[next];
            let extra = nx.cost - cur.cost;
            if total + extra > budget {
                continue;
            }
            let gain = (cur.error - nx.error) / extra.max(1e-12);
            if best.is_none_or(|(_, g, _)| gain > g) {
                best = Some((k, gain, extra));
            }
        }
        let Some((k, _, extra)) = best else { break };
        at[k] += 1;
        total += extra;
    }
    Some(
        hulls
            .iter()
            .zip(&at)
            .map(|(h, &a)| h.get(a).copied().unwrap_or(0))
            .collect(),
    )
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
    fn dominated_choices_are_skipped() {
        // 3 bits is no better than 2: the walk jumps to 4.
        let units = [unit("a", [10.0, 10.0, 1.0])];
        assert_eq!(allocate(&units, 400.0), Some(vec![2]));
        assert_eq!(allocate(&units, 300.0), Some(vec![0]));
    }
}
