//! A reference profile: the distribution of a version's input features
//! (its training data, say), stored with the version at registration, for
//! `drift_psi` triggers with `reference: profile`.
//!
//! JSON: `{"features": {"<name>": <sketch>, ...}}`, each sketch in the
//! tagged form of [`Sketch`]. Bounded: at most [`PROFILE_BYTES_MAX`] of
//! JSON (checked by whoever reads the text) and [`PROFILE_FEATURES_MAX`]
//! features ([`Profile::check`]).

use super::signals::Sketch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest profile accepted, as JSON text (1 MiB).
pub const PROFILE_BYTES_MAX: usize = 1 << 20;
/// Most features a profile may hold.
pub const PROFILE_FEATURES_MAX: usize = 256;
/// Longest feature name (as the policy's `feature` allows).
pub const PROFILE_NAME_MAX: usize = 128;

/// Sketches by feature name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub features: BTreeMap<String, Sketch>,
}

/// Why a profile is refused: the failing field (`features`,
/// `features.amount`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ProfileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ProfileError {}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> ProfileError {
    ProfileError {
        field: field.into(),
        message: message.into(),
    }
}

impl Profile {
    /// Checks the bounds on features: at most [`PROFILE_FEATURES_MAX`],
    /// names of 1 to [`PROFILE_NAME_MAX`] bytes. (The byte bound is the
    /// reader's, before parsing: see the gateway's `profile` module.)
    pub fn check(&self) -> Result<(), ProfileError> {
        if self.features.len() > PROFILE_FEATURES_MAX {
            return Err(refuse(
                "profile.features",
                format!(
                    "{} features, more than {PROFILE_FEATURES_MAX}",
                    self.features.len()
                ),
            ));
        }
        if let Some(name) = self
            .features
            .keys()
            .find(|n| n.is_empty() || n.len() > PROFILE_NAME_MAX)
        {
            return Err(refuse(
                format!("profile.features.{name}"),
                format!("feature names are 1 to {PROFILE_NAME_MAX} bytes"),
            ));
        }
        Ok(())
    }

    /// Feature names, sorted.
    pub fn feature_names(&self) -> Vec<String> {
        self.features.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::signals::Signals;

    fn sample_profile() -> Profile {
        let mut signals = Signals::default();
        for i in 0..500 {
            signals.sketch_number("amount", 10.0 + (i % 50) as f64);
            signals.sketch_category("country", if i % 3 == 0 { "fr" } else { "de" });
        }
        Profile {
            features: signals.features,
        }
    }

    #[test]
    fn a_profile_roundtrips_through_json() {
        let profile = sample_profile();
        let text = serde_json::to_string(&profile).unwrap();
        assert!(text.contains("\"kind\":\"numeric\""), "{text}");
        assert!(text.contains("\"kind\":\"categorical\""), "{text}");
        let back: Profile = serde_json::from_str(&text).unwrap();
        assert_eq!(back, profile);
        assert_eq!(back.feature_names(), vec!["amount", "country"]);
        // Sparse: far below the 9 KiB of a full numeric sketch.
        assert!(text.len() < 2000, "{} bytes", text.len());
        let wrong = text.replace("\"layout\":1", "\"layout\":9");
        let error = serde_json::from_str::<Profile>(&wrong).unwrap_err();
        assert!(error.to_string().contains("layout 9"), "{error}");
    }

    #[test]
    fn profiles_out_of_bounds_are_refused_naming_the_field() {
        let mut profile = Profile::default();
        for i in 0..=PROFILE_FEATURES_MAX {
            profile.features.insert(
                format!("f{i}"),
                Sketch::Categorical(crate::analysis::CategoricalSketch::new()),
            );
        }
        let error = profile.check().unwrap_err();
        assert_eq!(error.field, "profile.features");
        assert!(error.message.contains("257 features"), "{error}");
        let mut profile = sample_profile();
        assert_eq!(profile.check(), Ok(()));
        let sketch = profile.features["amount"].clone();
        profile.features.insert(String::new(), sketch);
        assert_eq!(profile.check().unwrap_err().field, "profile.features.");
    }
}
