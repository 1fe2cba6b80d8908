//! Where each setting's value comes from, in one precedence: a command-line
//! flag (where a command has one), then the environment, then the config
//! file, then the default. The file is applied to the process's
//! environment at start-up, before the command line is parsed, for every
//! variable the environment does not set — so the flags' environment
//! fallbacks, the settings reader and the log set-up all see the file
//! through the same variables. `stepd config` reports the result, by
//! [`effective`], without a secret or a password.

use std::path::Path;

use super::{read_config_file, strip_password, ConfigError, SettingKey, Shown, SETTING_KEYS};

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The process's environment.
    Environment,
    /// The config file.
    File,
    /// The built-in default.
    Default,
    /// Nothing sets it, and it has no default.
    Unset,
}

/// One setting as `stepd config` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Effective {
    /// `section.key` in the config file.
    pub setting: String,
    /// The environment variable.
    pub variable: &'static str,
    /// The value, fit to print (`None`: unset).
    pub value: Option<String>,
    /// Where it came from.
    pub source: Source,
}

/// Put every setting of the config file at `path` into the environment,
/// unless the environment already sets it; the variables it set.
pub fn apply_file_to_env(path: &Path) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = read_config_file(path)?.into_iter().collect();
    vars.sort();
    for (variable, value) in vars {
        if std::env::var_os(&variable).is_none() {
            // Start-up, before any thread exists: the only safe moment.
            std::env::set_var(&variable, value);
            applied.push(variable);
        }
    }
    Ok(applied)
}

/// The value of `key` fit to print.
fn shown(key: &SettingKey, value: &str) -> String {
    match key.shown {
        Shown::Plain => value.to_owned(),
        Shown::Url => strip_password(value),
        Shown::Tokens => {
            let n = value.split(',').filter(|t| !t.trim().is_empty()).count();
            format!("{n} token(s)")
        }
    }
}

/// Every setting with its value and its source, given the variables the
/// file set ([`apply_file_to_env`]) and a view of the environment.
pub fn effective(from_file: &[String], env: impl Fn(&str) -> Option<String>) -> Vec<Effective> {
    SETTING_KEYS
        .iter()
        .map(|key| {
            let (value, source) = match env(key.variable) {
                Some(value) if from_file.iter().any(|v| v == key.variable) => (Some(value), Source::File),
                Some(value) => (Some(value), Source::Environment),
                None => match key.default {
                    Some(default) => (Some(default.to_owned()), Source::Default),
                    None => (None, Source::Unset),
                },
            };
            Effective {
                setting: format!("{}.{}", key.section, key.key),
                variable: key.variable,
                value: value.map(|v| shown(key, &v)),
                source,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_names_its_source_and_no_password_or_token_is_shown() {
        let env = |name: &str| match name {
            "DATABASE_URL" => Some("postgres://u:hunter2@db/stepd?password=hunter3".to_owned()),
            "STEPD_OPERATOR_TOKENS" => Some("tok-a,tok-b".to_owned()),
            "STEPD_MEMORY_MB" => Some("256".to_owned()),
            _ => None,
        };
        let all = effective(&["STEPD_MEMORY_MB".to_owned()], env);
        let find = |v: &str| all.iter().find(|e| e.variable == v).expect("listed").clone();
        assert_eq!(find("STEPD_MEMORY_MB").source, Source::File);
        assert_eq!(find("DATABASE_URL").source, Source::Environment);
        assert_eq!(find("STEPD_LEASE_SECONDS").value.as_deref(), Some("30"));
        assert_eq!(find("STEPD_LEASE_SECONDS").source, Source::Default);
        assert_eq!(find("AMQP_URL").source, Source::Unset);
        let text = format!("{all:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("hunter3") && !text.contains("tok-a"),
            "{text}"
        );
        assert_eq!(find("STEPD_OPERATOR_TOKENS").value.as_deref(), Some("2 token(s)"));
    }
}
