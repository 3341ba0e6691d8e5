//! The module catalogue (`--modules FILE`): loading and checking it, validating a run's
//! parameters, and substituting them into argv elements — never through a shell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::RunSpec;

/// The catalogue file: `{"modules": {"id": Module, ...}}`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// Modules by id.
    pub modules: BTreeMap<String, Module>,
}

/// One runnable module: a program, its argv template and its parameters.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    /// Display name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: Option<String>,
    /// The program to execute (no shell).
    pub program: String,
    /// Arguments; `{param}` inside an element is replaced by that parameter's value.
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory (relative paths are relative to the server's working directory).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Stop the run after this many seconds.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL.
    #[serde(default)]
    pub grace_seconds: Option<f64>,
    /// GPU memory (MiB) the run needs free before it starts; 0 for none.
    #[serde(default)]
    pub gpu_memory_mb: u64,
    /// Most memory (MiB) the run's processes may use together, enforced by its cgroup
    /// where the memory controller is available (see `RunSpec::memory_max_mb`); 0 for no
    /// limit.
    #[serde(default)]
    pub memory_max_mb: u64,
    /// Parameters by name.
    #[serde(default)]
    pub parameters: BTreeMap<String, Parameter>,
    /// Patterns for metrics in the output beyond the built-in formats: regular
    /// expressions whose named groups are metrics (`"epoch (?P<epoch>\\d+)/\\d+ loss
    /// (?P<loss>[-+.\\deE]+)"`). See `RunSpec::metric_pattern`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_patterns: Vec<String>,
}

/// A parameter's type and constraints.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// `integer`, `number`, `string` or `boolean`.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Used when the request does not give the parameter.
    #[serde(default)]
    pub default: Option<Value>,
    /// Smallest allowed value (numbers).
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest allowed value (numbers).
    #[serde(default)]
    pub max: Option<f64>,
    /// The only allowed values.
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<Value>>,
    /// A regular expression the whole string must match (strings).
    #[serde(default)]
    pub pattern: Option<String>,
    /// What it means.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether a request must give it (when there is no default). Defaults to true
    /// for parameters without a default.
    #[serde(default)]
    pub required: Option<bool>,
}

/// A parameter's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A JSON integer.
    Integer,
    /// Any JSON number.
    Number,
    /// A JSON string.
    String,
    /// `true` or `false`.
    Boolean,
}

impl Catalogue {
    /// Reads and checks a catalogue file. The error names the file and the bad field.
    pub fn load(path: &Path) -> Result<Catalogue, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read modules file {}: {e}", path.display()))?;
        let catalogue: Catalogue = serde_json::from_str(&text)
            .map_err(|e| format!("invalid modules file {}: {e}", path.display()))?;
        catalogue
            .check()
            .map_err(|e| format!("invalid modules file {}: {e}", path.display()))?;
        Ok(catalogue)
    }

    /// Checks every module: names, placeholders, constraints, defaults, patterns.
    pub fn check(&self) -> Result<(), String> {
        for (id, module) in &self.modules {
            let at = |field: &str| format!("modules.{id}.{field}");
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "modules.{id:?}: ids use letters, digits, '-' and '_'"
                ));
            }
            if module.program.trim().is_empty() {
                return Err(format!("{}: must not be empty", at("program")));
            }
            // What `POST /api/runs` refuses (a NUL cannot reach a child; a name with `=`
            // sets another variable than the one written).
            let nul = |field: String, text: &str| {
                if text.contains('\0') {
                    Err(format!("{field}: must not contain NUL"))
                } else {
                    Ok(())
                }
            };
            nul(at("program"), &module.program)?;
            for (i, arg) in module.args.iter().enumerate() {
                nul(at(&format!("args[{i}]")), arg)?;
            }
            if let Some(cwd) = &module.cwd {
                nul(at("cwd"), &cwd.to_string_lossy())?;
            }
            for (name, value) in &module.env {
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    return Err(format!(
                        "{}: {name:?} is not a variable name (empty, or with '=' or NUL)",
                        at("env")
                    ));
                }
                nul(at(&format!("env.{name}")), value)?;
            }
            for (i, arg) in module.args.iter().enumerate() {
                for name in placeholders(arg) {
                    if !module.parameters.contains_key(name) {
                        return Err(format!(
                            "{}: {{{name}}} is not a declared parameter",
                            at(&format!("args[{i}]"))
                        ));
                    }
                }
            }
            for (name, value) in [
                ("timeout_seconds", module.timeout_seconds),
                ("grace_seconds", module.grace_seconds),
            ] {
                if value.is_some_and(|v| seconds(v).is_none()) {
                    return Err(format!(
                        "{}: must be a number of seconds from 0 to below {MAX_SECONDS:e}",
                        at(name)
                    ));
                }
            }
            crate::metrics::MetricRules::new(&module.metric_patterns)
                .map_err(|e| format!("{}: {e}", at("metric_patterns")))?;
            for (name, p) in &module.parameters {
                let at = |field: &str| format!("modules.{id}.parameters.{name}.{field}");
                if let (Some(min), Some(max)) = (p.min, p.max) {
                    if min > max {
                        return Err(format!(
                            "{}: min {min} is greater than max {max}",
                            at("min")
                        ));
                    }
                }
                if let Some(pattern) = &p.pattern {
                    if p.kind != ParamType::String {
                        return Err(format!(
                            "{}: only string parameters take a pattern",
                            at("pattern")
                        ));
                    }
                    regex_lite::Regex::new(pattern).map_err(|e| {
                        format!("{}: not a valid regular expression: {e}", at("pattern"))
                    })?;
                }
                if let Some(values) = &p.allowed {
                    for v in values {
                        p.check_type(v)
                            .map_err(|e| format!("{}: {e}", at("enum")))?;
                    }
                }
                if let Some(default) = &p.default {
                    p.check(default)
                        .map_err(|e| format!("{}: {e}", at("default")))?;
                }
            }
        }
        Ok(())
    }

    /// Validates `given` against module `id`'s parameters and builds the run: defaults
    /// filled in, values substituted into argv elements. Returns the spec and the full
    /// parameter values used.
    pub fn build(
        &self,
        id: &str,
        given: &serde_json::Map<String, Value>,
    ) -> Result<(RunSpec, BTreeMap<String, Value>), BuildError> {
        let module = self.modules.get(id).ok_or(BuildError::NotFound)?;
        let invalid = BuildError::Invalid;
        if let Some(unknown) = given.keys().find(|k| !module.parameters.contains_key(*k)) {
            let known: Vec<&str> = module.parameters.keys().map(String::as_str).collect();
            return Err(invalid(format!(
                "unknown parameter {unknown:?} (this module takes: {})",
                known.join(", ")
            )));
        }
        let mut values = BTreeMap::new();
        for (name, p) in &module.parameters {
            let value = match (given.get(name), &p.default) {
                (Some(v), _) => {
                    p.check(v)
                        .map_err(|e| invalid(format!("parameter {name:?}: {e}")))?;
                    v.clone()
                }
                (None, Some(default)) => default.clone(),
                (None, None) if p.required == Some(false) => continue,
                (None, None) => {
                    return Err(invalid(format!("missing required parameter {name:?}")))
                }
            };
            values.insert(name.clone(), value);
        }
        let args = module
            .args
            .iter()
            .map(|arg| substitute(arg, &values))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let mut spec = RunSpec::new(&module.program).args(args).module_id(id);
        if let Some(cwd) = &module.cwd {
            spec = spec.cwd(cwd);
        }
        for (k, v) in &module.env {
            spec = spec.env(k, v);
        }
        // `check` bounded both; a catalogue built in code and never checked gets the
        // same bounds here instead of a panic.
        let duration = |field: &str, v: f64| {
            seconds(v).ok_or_else(|| {
                invalid(format!(
                    "module {id:?}: {field} {v} is not a number of seconds from 0 to below \
                     {MAX_SECONDS:e}"
                ))
            })
        };
        if let Some(t) = module.timeout_seconds {
            spec = spec.timeout(duration("timeout_seconds", t)?);
        }
        if let Some(g) = module.grace_seconds {
            spec = spec.grace(duration("grace_seconds", g)?);
        }
        spec = spec
            .gpu_memory_mb(module.gpu_memory_mb)
            .memory_max_mb(module.memory_max_mb);
        for pattern in &module.metric_patterns {
            spec = spec.metric_pattern(pattern);
        }
        Ok((spec, values))
    }
}

/// Why a module run could not be built.
#[derive(Debug, PartialEq, Eq)]
pub enum BuildError {
    /// No module with that id.
    NotFound,
    /// The parameters are wrong; the text says how.
    Invalid(String),
}

impl Parameter {
    fn check_type(&self, v: &Value) -> Result<(), String> {
        let ok = match self.kind {
            ParamType::Integer => v.is_i64() || v.is_u64(),
            ParamType::Number => v.is_number(),
            ParamType::String => v.is_string(),
            ParamType::Boolean => v.is_boolean(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, got {v}", type_name(self.kind)))
        }
    }

    /// Checks type, range, enum and pattern.
    fn check(&self, v: &Value) -> Result<(), String> {
        self.check_type(v)?;
        if let Some(n) = v.as_f64() {
            if let Some(min) = self.min.filter(|min| n < *min) {
                return Err(format!("{v} is below the minimum {min}"));
            }
            if let Some(max) = self.max.filter(|max| n > *max) {
                return Err(format!("{v} is above the maximum {max}"));
            }
        }
        if let Some(allowed) = &self.allowed {
            if !allowed.contains(v) {
                let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                return Err(format!("{v} is not one of {}", list.join(", ")));
            }
        }
        if let (Some(pattern), Some(s)) = (&self.pattern, v.as_str()) {
            let anchored = format!("^(?:{pattern})$");
            let re = regex_lite::Regex::new(&anchored).map_err(|e| e.to_string())?;
            if !re.is_match(s) {
                return Err(format!("{v} does not match the pattern {pattern}"));
            }
        }
        Ok(())
    }
}

fn type_name(kind: ParamType) -> &'static str {
    match kind {
        ParamType::Integer => "an integer",
        ParamType::Number => "a number",
        ParamType::String => "a string",
        ParamType::Boolean => "true or false",
    }
}

/// The text a value becomes inside an argument.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Largest timeout or grace period, in seconds (about 31 years), in the catalogue and in
/// `POST /api/runs`: anything larger is a mistake, and would overflow a deadline.
pub(crate) const MAX_SECONDS: f64 = 1e9;

/// `v` seconds as a `Duration`, when it is finite, not negative and below [`MAX_SECONDS`].
pub(crate) fn seconds(v: f64) -> Option<Duration> {
    (v.is_finite() && (0.0..MAX_SECONDS).contains(&v)).then(|| Duration::from_secs_f64(v))
}

/// `template` with each `{name}` replaced by that parameter's value, in one pass: a value
/// is data, so a `{b}` inside the value of `a` stays as it is. Text in braces that is not
/// a parameter name (`{}`, `{a b}`) stays too, as `placeholders` does not list it.
fn substitute(template: &str, values: &BTreeMap<String, Value>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name = after.find('}').map(|close| &after[..close]);
        match name.filter(|n| is_param_name(n)) {
            Some(name) => {
                let value = values
                    .get(name)
                    .ok_or_else(|| format!("parameter {name:?} has no value and no default"))?;
                out.push_str(&value_text(value));
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_param_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Names inside `{…}` in an argv template element.
fn placeholders(arg: &str) -> impl Iterator<Item = &str> {
    arg.split('{').skip(1).filter_map(|rest| {
        let name = &rest[..rest.find('}')?];
        is_param_name(name).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalogue() -> Catalogue {
        serde_json::from_value(json!({"modules": {"train": {
            "name": "Train", "program": "python3", "args": ["train.py", "--epochs", "{epochs}", "--name={name}"],
            "parameters": {
                "epochs": {"type": "integer", "default": 3, "min": 1, "max": 10},
                "name": {"type": "string", "default": "run", "pattern": "[a-z ;/-]+"},
                "opt": {"type": "string", "enum": ["adam", "sgd"], "required": false}
            }}}}))
        .unwrap()
    }

    fn build(params: Value) -> Result<Vec<String>, BuildError> {
        let c = catalogue();
        c.check().unwrap();
        let (spec, _) = c.build("train", params.as_object().unwrap())?;
        Ok(spec
            .get_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn defaults_and_substitution_into_argv_elements_only() {
        assert_eq!(
            build(json!({})).unwrap(),
            ["train.py", "--epochs", "3", "--name=run"]
        );
        let args = build(json!({"epochs": 7, "name": "x; rm -rf /"})).unwrap();
        assert_eq!(args, ["train.py", "--epochs", "7", "--name=x; rm -rf /"]);
    }

    #[test]
    fn bad_parameters_are_rejected_with_reasons() {
        let err = |p| match build(p) {
            Err(BuildError::Invalid(e)) => e,
            other => panic!("{other:?}"),
        };
        assert!(err(json!({"epochs": 0})).contains("below the minimum"));
        assert!(err(json!({"epochs": 11})).contains("above the maximum"));
        assert!(err(json!({"epochs": "3"})).contains("expected an integer"));
        assert!(err(json!({"epochs": 2.5})).contains("expected an integer"));
        assert!(err(json!({"name": "UPPER"})).contains("does not match"));
        assert!(err(json!({"opt": "rmsprop"})).contains("not one of"));
        assert!(err(json!({"bogus": 1})).contains("unknown parameter \"bogus\""));
        assert_eq!(
            catalogue().build("nope", &Default::default()).unwrap_err(),
            BuildError::NotFound
        );
    }

    /// Issue 16.7: with args `["{a}|{b}"]` and `a="{b}"`, the child got `zz|zz`.
    #[test]
    fn a_value_is_substituted_once_and_never_inside_another_value() {
        let c: Catalogue = serde_json::from_value(json!({"modules": {"m": {
            "name": "M", "program": "echo", "args": ["{a}|{b}", "{b}{a}", "{{a}}", "{}x{", "{a b}"],
            "parameters": {"a": {"type": "string"}, "b": {"type": "string"}}}}}))
        .unwrap();
        c.check().unwrap();
        let given = json!({"a": "{b}", "b": "zz"});
        let (spec, _) = c.build("m", given.as_object().unwrap()).unwrap();
        let args: Vec<_> = spec
            .get_args()
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect();
        assert_eq!(args, ["{b}|zz", "zz{b}", "{{b}}", "{}x{", "{a b}"]);
    }

    /// Issue 16.6: `timeout_seconds: 1e300` panicked converting to a Duration (POST got
    /// an empty 500), `1e19` overflowed a deadline. The catalogue takes what the API takes.
    #[test]
    fn durations_beyond_the_api_bounds_are_refused_at_load() {
        for (field, v) in [
            ("timeout_seconds", json!(1e300)),
            ("timeout_seconds", json!(1e19)),
            ("grace_seconds", json!(1e19)),
            ("grace_seconds", json!(1e9)),
            ("timeout_seconds", json!(-1)),
        ] {
            let c: Catalogue = serde_json::from_value(
                json!({"modules": {"m": {"name": "M", "program": "x", field: v}}}),
            )
            .unwrap();
            let err = c.check().unwrap_err();
            assert!(err.contains(&format!("modules.m.{field}")), "{err}");
            // Built without the check (a catalogue made in code): an error, not a panic.
            match c.build("m", &Default::default()) {
                Err(BuildError::Invalid(e)) => assert!(e.contains(field), "{e}"),
                other => panic!("{other:?}"),
            }
        }
        let ok: Catalogue = serde_json::from_value(json!({"modules": {"m": {
            "name": "M", "program": "x", "timeout_seconds": 999999999.0, "grace_seconds": 0}}}))
        .unwrap();
        ok.check().unwrap();
        let (spec, _) = ok.build("m", &Default::default()).unwrap();
        assert_eq!(spec.get_timeout(), Some(Duration::from_secs(999_999_999)));
    }

    #[test]
    fn invalid_catalogues_name_the_bad_field() {
        let check = |v: Value| -> String {
            match serde_json::from_value::<Catalogue>(v) {
                Ok(c) => c.check().unwrap_err(),
                Err(e) => e.to_string(),
            }
        };
        assert!(check(
            json!({"modules": {"m": {"name": "M", "program": "x", "args": ["{nope}"]}}})
        )
        .contains("modules.m.args[0]"));
        assert!(check(json!({"modules": {"m": {"name": "M", "program": "x", "parameters": {"p": {"type": "integer", "default": 50, "max": 10}}}}})).contains("modules.m.parameters.p.default"));
        assert!(check(json!({"modules": {"m": {"name": "M", "program": "x", "parameters": {"p": {"type": "string", "pattern": "("}}}}})).contains("parameters.p.pattern"));
        assert!(
            check(json!({"modules": {"m": {"name": "M", "program": "x", "colour": 1}}}))
                .contains("unknown field `colour`")
        );
        assert!(
            check(json!({"modules": {"m": {"name": "M", "program": ""}}}))
                .contains("modules.m.program")
        );
        assert!(check(json!({"modules": {"m": {"name": "M", "program": "x", "parameters": {"p": {"type": "float"}}}}})).contains("unknown variant `float`"));
    }
}
