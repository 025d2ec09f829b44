//! Pacemaker scores: integers clamped to ±INFINITY (= ±1,000,000).
//!
//! Pacemaker adds scores with two special rules: `-INFINITY` beats everything (a ban is never
//! outvoted), and `+INFINITY` beats every finite score. Adding clamped values one at a time is not
//! associative (`999_999 + 5 - 10` differs by order), so sums go through [`ScoreSum`], which keeps
//! the finite part exact and applies the infinity rules once: the result is independent of the order
//! in which constraints were listed, which every node needs to compute the same placement.

use std::fmt;

/// One Pacemaker score, always within `[-INFINITY, +INFINITY]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(from = "i64", into = "i64")]
pub struct Score(i64);

impl From<i64> for Score {
    fn from(v: i64) -> Score {
        Score::new(v)
    }
}

impl From<Score> for i64 {
    fn from(s: Score) -> i64 {
        s.0
    }
}

impl Score {
    /// Pacemaker's INFINITY.
    pub const INFINITY_VALUE: i64 = 1_000_000;
    /// `+INFINITY`: must.
    pub const INFINITY: Score = Score(Self::INFINITY_VALUE);
    /// `-INFINITY`: must not.
    pub const MINUS_INFINITY: Score = Score(-Self::INFINITY_VALUE);
    /// Neutral score.
    pub const ZERO: Score = Score(0);

    /// A score, clamped to ±INFINITY.
    pub const fn new(v: i64) -> Score {
        if v >= Self::INFINITY_VALUE {
            Self::INFINITY
        } else if v <= -Self::INFINITY_VALUE {
            Self::MINUS_INFINITY
        } else {
            Score(v)
        }
    }

    /// The integer value.
    pub const fn value(self) -> i64 {
        self.0
    }

    /// True for `+INFINITY`.
    pub const fn is_plus_infinity(self) -> bool {
        self.0 == Self::INFINITY_VALUE
    }

    /// True for `-INFINITY`.
    pub const fn is_minus_infinity(self) -> bool {
        self.0 == -Self::INFINITY_VALUE
    }

    /// Pacemaker's addition of two scores (`-INFINITY` wins, then `+INFINITY`, else a clamped sum).
    pub fn plus(self, other: Score) -> Score {
        let mut s = ScoreSum::default();
        s.add(self);
        s.add(other);
        s.total()
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_plus_infinity() {
            f.write_str("+INFINITY")
        } else if self.is_minus_infinity() {
            f.write_str("-INFINITY")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// An order-independent accumulator of scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreSum {
    finite: i64,
    plus_infinity: bool,
    minus_infinity: bool,
}

impl ScoreSum {
    /// Adds one score.
    pub fn add(&mut self, s: Score) {
        if s.is_minus_infinity() {
            self.minus_infinity = true;
        } else if s.is_plus_infinity() {
            self.plus_infinity = true;
        } else {
            self.finite = self.finite.saturating_add(s.value());
        }
    }

    /// The resulting score under Pacemaker's rules.
    pub fn total(&self) -> Score {
        if self.minus_infinity {
            Score::MINUS_INFINITY
        } else if self.plus_infinity {
            Score::INFINITY
        } else {
            Score::new(self.finite)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minus_infinity_wins_over_plus_infinity() {
        assert_eq!(Score::INFINITY.plus(Score::MINUS_INFINITY), Score::MINUS_INFINITY);
        assert_eq!(Score::MINUS_INFINITY.plus(Score::INFINITY), Score::MINUS_INFINITY);
    }

    #[test]
    fn finite_sums_clamp() {
        assert_eq!(Score::new(999_999).plus(Score::new(5)), Score::INFINITY);
        assert_eq!(Score::new(-999_999).plus(Score::new(-5)), Score::MINUS_INFINITY);
        assert_eq!(Score::new(7).plus(Score::new(-3)), Score::new(4));
        assert_eq!(Score::new(i64::MAX), Score::INFINITY);
    }

    #[test]
    fn sum_is_order_independent() {
        let a = [Score::new(999_999), Score::new(5), Score::new(-10)];
        let mut fwd = ScoreSum::default();
        a.iter().for_each(|s| fwd.add(*s));
        let mut rev = ScoreSum::default();
        a.iter().rev().for_each(|s| rev.add(*s));
        assert_eq!(fwd.total(), rev.total());
        assert_eq!(fwd.total(), Score::new(999_994));
    }

    #[test]
    fn display() {
        assert_eq!(Score::INFINITY.to_string(), "+INFINITY");
        assert_eq!(Score::MINUS_INFINITY.to_string(), "-INFINITY");
        assert_eq!(Score::new(-3).to_string(), "-3");
    }
}
