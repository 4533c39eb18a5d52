//! The statistics the judge uses: plain functions over counts, tested against published
//! values (scipy's, written into the tests).

use statrs::distribution::{
    Binomial, ContinuousCDF, Discrete, DiscreteCDF, Hypergeometric, Normal,
};

/// One-sided Fisher's exact test: the chance of seeing at least `errors_a` errors among
/// `n_a` requests of side A if both sides shared one error rate (the margins fixed).
/// Small: A's rate is higher than chance explains. Same as
/// `scipy.stats.fisher_exact([[errors_a, n_a - errors_a], [errors_b, n_b - errors_b]],
/// alternative="greater")`.
///
/// Exact at any sample size, which matters here: windows are small (tens of requests) and
/// error counts often zero, where a normal approximation (the two-proportion z-test) is
/// at its worst.
pub fn fisher_greater(errors_a: u64, n_a: u64, errors_b: u64, n_b: u64) -> f64 {
    let population = n_a + n_b;
    let errors = errors_a + errors_b;
    if n_a == 0 || n_b == 0 || errors == 0 {
        return 1.0;
    }
    let Ok(h) = Hypergeometric::new(population, errors, n_a) else {
        return 1.0;
    };
    let top = errors.min(n_a);
    // Summed from the far tail in: the small terms first, so none is lost to rounding.
    let p: f64 = (errors_a..=top).rev().map(|x| h.ln_pmf(x).exp()).sum();
    p.clamp(0.0, 1.0)
}

/// One-sided Mann-Whitney U test that A's values tend to be larger than B's, from values
/// grouped in ascending order as `(count in A, count in B)` per distinct value (ties share
/// their average rank). Normal approximation with tie and continuity correction, as
/// `scipy.stats.mannwhitneyu(a, b, alternative="greater", method="asymptotic")`.
///
/// A rank test: a few very slow outliers move it little, a side that is slower across the
/// board moves it a lot.
pub fn mann_whitney_greater(groups: impl IntoIterator<Item = (u64, u64)>) -> f64 {
    let groups: Vec<(u64, u64)> = groups.into_iter().collect();
    let Some(u) = u_statistic(&groups) else {
        // One side empty, or every value the same: nothing tells the sides apart.
        return 1.0;
    };
    let z = (u.u - u.mean - 0.5) / u.var.sqrt();
    Normal::standard().sf(z).clamp(0.0, 1.0)
}

/// One-sided exact binomial test that a rate is over `p0`: the chance of at least `k`
/// successes in `n` trials at rate `p0`. Same as `scipy.stats.binomtest(k, n, p0,
/// alternative="greater").pvalue`. The absolute backstops use it: a limit is crossed only
/// when the count says so beyond chance, not when a small window happens to be over it.
pub fn binomial_greater(k: u64, n: u64, p0: f64) -> f64 {
    if k == 0 || n == 0 {
        return 1.0;
    }
    if p0 <= 0.0 {
        return 0.0;
    }
    let Ok(b) = Binomial::new(p0.min(1.0), n) else {
        return 1.0;
    };
    b.sf(k - 1).clamp(0.0, 1.0)
}

/// Van Elteren's stratified Wilcoxon rank-sum test that A's values tend to be larger than
/// B's within strata: each stratum's Mann-Whitney U (grouped values as in
/// [`mann_whitney_greater`]), weighted by `1/(n+1)` and summed. Comparing within strata
/// (a model, an answer length) keeps a mix that differs between the sides — one heavy user
/// with long answers on one side — from looking like a slower side. Strata with only one
/// side say nothing and are left out. With a single stratum it is exactly
/// [`mann_whitney_greater`].
pub fn van_elteren_greater(strata: &[Vec<(u64, u64)>]) -> f64 {
    let (mut sum, mut var) = (0f64, 0f64);
    let mut weights = Vec::new();
    for groups in strata {
        if let Some(u) = u_statistic(groups) {
            let w = 1.0 / (u.n + 1.0);
            sum += w * (u.u - u.mean);
            var += w * w * u.var;
            weights.push(w);
        }
    }
    if weights.is_empty() || var <= 0.0 {
        return 1.0;
    }
    // A single stratum gets Mann-Whitney's continuity correction; a sum of several is
    // closer to continuous and gets none.
    if let [w] = weights[..] {
        sum -= 0.5 * w;
    }
    Normal::standard().sf(sum / var.sqrt()).clamp(0.0, 1.0)
}

struct UStat {
    u: f64,
    mean: f64,
    var: f64,
    n: f64,
}

/// Mann-Whitney's U of A over B with its mean and (tie-corrected) variance under the null;
/// `None` when either side is empty or all values tie.
fn u_statistic(groups: &[(u64, u64)]) -> Option<UStat> {
    let (mut n_a, mut n_b) = (0f64, 0f64);
    let mut rank_sum_a = 0f64;
    let mut ties = 0f64;
    let mut below = 0f64;
    for &(a, b) in groups {
        let t = (a + b) as f64;
        if t == 0.0 {
            continue;
        }
        let average_rank = below + (t + 1.0) / 2.0;
        rank_sum_a += a as f64 * average_rank;
        ties += t * t * t - t;
        below += t;
        n_a += a as f64;
        n_b += b as f64;
    }
    if n_a == 0.0 || n_b == 0.0 {
        return None;
    }
    let n = n_a + n_b;
    let var = n_a * n_b / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    (var > 0.0).then(|| UStat {
        u: rank_sum_a - n_a * (n_a + 1.0) / 2.0,
        mean: n_a * n_b / 2.0,
        var,
        n,
    })
}

/// Two-sided test that `k` of `n` is a share other than `p` (normal approximation with
/// continuity correction: the chi-square test of a sample-ratio mismatch, one degree of
/// freedom).
pub fn share_differs(k: u64, n: u64, p: f64) -> f64 {
    if n == 0 || p <= 0.0 || p >= 1.0 {
        return 1.0;
    }
    let n_f = n as f64;
    let sd = (n_f * p * (1.0 - p)).sqrt();
    let z = ((k as f64 - n_f * p).abs() - 0.5).max(0.0) / sd;
    (2.0 * Normal::standard().sf(z)).clamp(0.0, 1.0)
}

/// McNemar's exact test on paired yes/no outcomes: `b` pairs where only the first side said
/// yes, `c` where only the second did (pairs where both agree say nothing). Two-sided: the
/// chance, if either side were as likely to be the one that differs, of a split at least
/// as uneven. Same as `scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue`.
///
/// Paired beats unpaired here: every shadow is the same prompt on both sides, so a side
/// that drops tool calls on prompts the other honours shows in a few tens of pairs.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let Ok(binomial) = Binomial::new(0.5, n) else {
        return 1.0;
    };
    (2.0 * binomial.cdf(b.min(c))).clamp(0.0, 1.0)
}

/// Wilcoxon's signed-rank test that paired differences are centred on zero, two-sided.
/// Zero differences are dropped from the ranks; the rest are ranked by size (ties share
/// their average rank). The p-value is computed as `scipy.stats.wilcoxon(d).pvalue` does
/// with its defaults (`zero_method="wilcox"`, `correction=False`, `method="auto"`): exact
/// when there are at most 50 differences, none zero and none tied; with zeros or ties and
/// at most 13 differences, every sign pattern enumerated (scipy's permutation test, which
/// is exact at that size); otherwise the normal approximation with the tie correction.
pub fn wilcoxon(differences: &[f64]) -> f64 {
    let all: Vec<f64> = differences
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    let zeros = all.iter().filter(|x| **x == 0.0).count();
    let mut d: Vec<f64> = all.iter().copied().filter(|x| *x != 0.0).collect();
    let n = d.len();
    if n == 0 {
        return 1.0;
    }
    d.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    // (rank, positive) per difference.
    let mut ranked = Vec::with_capacity(n);
    let mut ties = 0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && d[j + 1].abs() == d[i].abs() {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let rank = (i + j) as f64 / 2.0 + 1.0;
        ranked.extend(d[i..=j].iter().map(|x| (rank, *x > 0.0)));
        ties += t * t * t - t;
        i = j + 1;
    }
    let plus: f64 = ranked.iter().filter(|r| r.1).map(|r| r.0).sum();
    let minus: f64 = ranked.iter().filter(|r| !r.1).map(|r| r.0).sum();
    let n_f = n as f64;
    if all.len() <= 50 && ties == 0.0 && zeros == 0 {
        // The exact null distribution of W: how many of the 2^n sign patterns give each sum.
        let top = n * (n + 1) / 2;
        let mut ways = vec![0f64; top + 1];
        ways[0] = 1.0;
        for k in 1..=n {
            for s in (k..=top).rev() {
                ways[s] += ways[s - k];
            }
        }
        let total = 2f64.powi(n as i32);
        let at_most: f64 = ways[..=(plus.min(minus) as usize)].iter().sum();
        return (2.0 * at_most / total).clamp(0.0, 1.0);
    }
    if all.len() <= 13 {
        // Every sign pattern of the ranks as they are (ties keep their average ranks).
        let tolerance = 1e-9 * plus.max(1.0);
        let (mut above, mut below) = (0u64, 0u64);
        for mask in 0u32..(1 << n) {
            let w: f64 = ranked
                .iter()
                .enumerate()
                .filter(|(k, _)| mask & (1 << k) != 0)
                .map(|(_, r)| r.0)
                .sum();
            above += u64::from(w >= plus - tolerance);
            below += u64::from(w <= plus + tolerance);
        }
        let total = f64::from(1u32 << n);
        return (2.0 * (above.min(below) as f64) / total).clamp(0.0, 1.0);
    }
    let mean = n_f * (n_f + 1.0) / 4.0;
    let var = n_f * (n_f + 1.0) * (2.0 * n_f + 1.0) / 24.0 - ties / 48.0;
    if var <= 0.0 {
        return 1.0;
    }
    let z = (plus.min(minus) - mean) / var.sqrt();
    (2.0 * Normal::standard().sf(z.abs())).clamp(0.0, 1.0)
}

/// The significance level of look `k` (1, 2, …) when `alpha` is spent over an unbounded
/// number of looks: `alpha · 6/(π² k²)`. The levels add up to `alpha` (Σ 1/k² = π²/6), so the
/// chance of any false alarm over all the looks of a phase stays at most `alpha`, however
/// long the phase runs (a union bound: it holds whatever the looks' correlation).
pub fn alpha_at_look(alpha: f64, k: u32) -> f64 {
    let k = f64::from(k.max(1));
    alpha * 6.0 / (std::f64::consts::PI * std::f64::consts::PI * k * k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) {
        let rel = ((got - want) / want).abs();
        assert!(rel < 1e-6, "got {got:e}, want {want:e}");
    }

    /// Reference values: scipy 1.17.1, `scipy.stats.fisher_exact(table, alternative="greater").pvalue`.
    #[test]
    fn fisher_matches_scipy() {
        close(fisher_greater(3, 20, 0, 20), 0.1153846153846154);
        close(fisher_greater(20, 20, 0, 20), 7.254444551924844e-12);
        close(fisher_greater(8, 100, 8, 100), 0.6023593458253891);
        close(fisher_greater(12, 100, 5, 100), 0.06308943063184522);
        close(fisher_greater(93, 93, 0, 107), 1.79901185184173e-59);
        close(fisher_greater(1, 10, 0, 10), 0.5);
        assert_eq!(fisher_greater(0, 10, 0, 10), 1.0);
        assert_eq!(fisher_greater(0, 0, 3, 10), 1.0);
    }

    fn groups(a: &[u64], b: &[u64]) -> Vec<(u64, u64)> {
        let mut values: Vec<u64> = a.iter().chain(b).copied().collect();
        values.sort_unstable();
        values.dedup();
        values
            .iter()
            .map(|v| {
                let count = |s: &[u64]| s.iter().filter(|x| *x == v).count() as u64;
                (count(a), count(b))
            })
            .collect()
    }

    /// Reference values: scipy 1.17.1, `scipy.stats.mannwhitneyu(a, b, alternative="greater",
    /// method="asymptotic", use_continuity=True).pvalue`.
    #[test]
    fn mann_whitney_matches_scipy() {
        let old = [120, 130, 125, 140, 118, 122, 135, 128, 131, 126];
        let new = [240, 250, 245, 260, 238, 242, 255, 248, 251, 246];
        close(
            mann_whitney_greater(groups(&new, &old)),
            9.133589555477501e-05,
        );
        // With ties.
        let a = [1, 2, 2, 3, 3, 3, 4, 5, 9, 9];
        let b = [1, 1, 2, 2, 3, 4, 4, 5, 5, 6];
        close(mann_whitney_greater(groups(&a, &b)), 0.3797284371796786);
        // One slow outlier among equals is no evidence.
        let mut a = [100; 20];
        a[19] = 5000;
        close(
            mann_whitney_greater(groups(&a, &[100; 20])),
            0.17105612630848183,
        );
        assert_eq!(mann_whitney_greater(groups(&[7; 5], &[7; 5])), 1.0);
        assert_eq!(mann_whitney_greater(groups(&[], &[7; 5])), 1.0);
    }

    /// Reference values: `scipy.stats.binomtest(k, n, p, alternative="greater").pvalue`
    /// (exact tail sums; e.g. 3 of 20 at 5%: 1 − (0.95²⁰ + 20·0.05·0.95¹⁹ + 190·0.05²·0.95¹⁸)).
    #[test]
    fn binomial_matches_scipy() {
        close(binomial_greater(3, 20, 0.05), 0.07548367378849719);
        close(binomial_greater(22, 22, 0.05), 0.05f64.powi(22));
        close(binomial_greater(1, 10, 0.5), 1.0 - 0.5f64.powi(10));
        assert_eq!(binomial_greater(0, 10, 0.05), 1.0);
    }

    #[test]
    fn van_elteren_compares_within_strata() {
        // One stratum: Mann-Whitney exactly.
        let old = [120, 130, 125, 140, 118, 122, 135, 128, 131, 126];
        let new = [240, 250, 245, 260, 238, 242, 255, 248, 251, 246];
        close(
            van_elteren_greater(&[groups(&new, &old)]),
            mann_whitney_greater(groups(&new, &old)),
        );
        // Short answers take 100 ms, long ones 2 s, on both sides alike; new has more long
        // ones. Pooled, new looks slower; within each length, it is not.
        let short_new = [100, 101, 102, 99, 98];
        let short_old = [100, 101, 102, 99, 98, 100, 101, 99, 100, 102, 98, 101];
        let long_new = [2000, 2010, 1990, 2005, 1995, 2002, 1998, 2001, 1999, 2003];
        let long_old = [2000, 2010, 1990];
        let pooled_new: Vec<u64> = short_new.iter().chain(&long_new).copied().collect();
        let pooled_old: Vec<u64> = short_old.iter().chain(&long_old).copied().collect();
        assert!(mann_whitney_greater(groups(&pooled_new, &pooled_old)) < 0.02);
        let p =
            van_elteren_greater(&[groups(&short_new, &short_old), groups(&long_new, &long_old)]);
        assert!(p > 0.2, "{p}");
        // A stratum seen on one side only says nothing.
        assert_eq!(van_elteren_greater(&[groups(&long_new, &[])]), 1.0);
    }

    #[test]
    fn a_share_that_differs() {
        assert!(share_differs(500, 1000, 0.5) > 0.9);
        assert!(share_differs(620, 1000, 0.5) < 1e-10);
        assert!(share_differs(30, 100, 0.25) > 0.2);
        assert_eq!(share_differs(10, 10, 1.0), 1.0);
    }

    #[test]
    fn alpha_spending_sums_to_alpha() {
        let total: f64 = (1..100_000).map(|k| alpha_at_look(0.05, k)).sum();
        assert!(total < 0.05 && total > 0.0499, "{total}");
        close(
            alpha_at_look(0.05, 1),
            0.05 * 6.0 / (std::f64::consts::PI.powi(2)),
        );
        close(alpha_at_look(0.05, 2), alpha_at_look(0.05, 1) / 4.0);
    }
    /// Reference values: scipy 1.17.1, `scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue`
    /// (McNemar's exact test as statsmodels' `mcnemar(table, exact=True)` computes it).
    #[test]
    fn mcnemar_matches_scipy() {
        close(mcnemar_exact(10, 2), 0.03857421875);
        close(mcnemar_exact(2, 10), 0.03857421875);
        close(mcnemar_exact(60, 0), 1.734723475976807e-18);
        close(mcnemar_exact(17, 3), 0.0025768280029296875);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
    }

    /// Reference values: scipy 1.17.1, `scipy.stats.wilcoxon(d).pvalue`. The first is the
    /// example of scipy's documentation (Cushny and Peebles' data via Fisher), exact.
    #[test]
    fn wilcoxon_matches_scipy() {
        let d = [
            6.0, 8.0, 14.0, 16.0, 23.0, 24.0, 28.0, 29.0, 41.0, -48.0, 49.0, 56.0, 60.0, -67.0,
            75.0,
        ];
        close(wilcoxon(&d), 0.041259765625);
        // Zeros and ties: the normal approximation.
        let d = [
            1.0, 2.0, 2.0, -1.0, 3.0, 0.0, 4.0, -2.0, 5.0, 5.0, 6.0, 1.0, -3.0, 2.0, 7.0, 0.0, 3.0,
        ];
        close(wilcoxon(&d), 0.013132608026923943);
        // Over 50 differences: the normal approximation.
        let d: Vec<f64> = (1..=60)
            .map(|x| if x % 3 == 0 { -x } else { x } as f64)
            .collect();
        close(wilcoxon(&d), 0.03590012321587811);
        // Zeros (not tied): no longer exact, the normal approximation.
        let mut d: Vec<f64> = vec![0.0, 0.0];
        d.extend((1..=16).map(f64::from));
        d.extend([-17.0, -18.0]);
        close(wilcoxon(&d), 0.027857098015306787);
        // Ten zeros and 45 differences: over 50 in all, the normal approximation.
        let mut d = vec![0.0; 10];
        d.extend((1..=45).map(f64::from));
        close(wilcoxon(&d), 5.1792547772953776e-09);
        // Ties or zeros among at most 13: every sign pattern.
        close(wilcoxon(&[1.0, 1.0, 2.0, 3.0, -4.0, 5.0]), 0.28125);
        close(wilcoxon(&[0.0, 1.0, 2.0, -3.0, 4.0, 5.0, 6.0]), 0.15625);
        let d = [
            2.0, -2.0, 2.0, 3.0, 3.0, -1.0, 4.0, 0.0, 5.0, 6.0, 7.0, -8.0, 9.0,
        ];
        close(wilcoxon(&d), 0.06103515625);
        assert_eq!(wilcoxon(&[]), 1.0);
        assert_eq!(wilcoxon(&[0.0, 0.0]), 1.0);
    }
}
