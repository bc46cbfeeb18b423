//! Constrained decoding: which tokens a sequence may take next so that its
//! output stays inside a grammar (a JSON schema, a regular expression, a Lark
//! grammar), on the `llguidance` library.
//!
//! - `Vocabulary`: one per model. The bytes each token stands for (from the
//!   tokenizer's JSON; special tokens marked so no grammar emits them by
//!   accident), the tokens that end an output, and the compiled grammars,
//!   kept by source so a schema sent again is not compiled again.
//! - `Grammar`: a compiled grammar, shared read-only by every sequence it constrains.
//! - `Constraint`: one sequence's position in its grammar. Each step computes
//!   its mask (the tokens allowed next: they do not depend on the step's
//!   logits, so the engine computes them while the forward pass runs), the
//!   sampler draws from the mask only, and `commit` advances the position by
//!   the drawn token. Once the grammar is complete only the end tokens remain.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

/// How many compiled grammars a vocabulary keeps (least recently used go first).
pub const COMPILED_KEPT: usize = 128;
/// Sources longer than this are compiled every time rather than kept: a few
/// huge grammars should not pin memory that many ordinary ones could use.
pub const KEPT_SOURCE_BYTES: usize = 256 << 10;

/// The kinds of grammar source `Vocabulary::compile` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A JSON schema (as JSON text); `x-guidance` at its top sets llguidance's JSON options.
    JsonSchema,
    /// A regular expression (Rust `regex` syntax) the whole output must match.
    Regex,
    /// A grammar in llguidance's Lark dialect (`%json { schema }` embeds a schema).
    Lark,
}

impl Kind {
    pub fn parse(name: &str) -> Result<Kind, String> {
        match name {
            "json_schema" => Ok(Kind::JsonSchema),
            "regex" => Ok(Kind::Regex),
            "lark" => Ok(Kind::Lark),
            other => Err(format!("unknown grammar kind {other:?}: json_schema, regex or lark")),
        }
    }
}

pub struct Vocabulary {
    factory: ParserFactory,
    compiled: Mutex<Compiled>,
    /// Two independently seeded hashers: a source is kept under its 128-bit
    /// digest, which no client can steer into another's (the seeds are random).
    seeds: (RandomState, RandomState),
}

/// A kept grammar's key: its kind and its source's digest.
type Key = (Kind, u64, u64);

/// Compiled grammars by key, least recently used first in `order`.
#[derive(Default)]
struct Compiled {
    by_source: HashMap<Key, Arc<Grammar>>,
    order: VecDeque<Key>,
}

impl Vocabulary {
    /// A vocabulary of `words[i]`, the bytes token i stands for (a special
    /// token's: 0xFF then its text, as llguidance marks them; empty for an id
    /// that stands for nothing). `stops`: the tokens that may end an output,
    /// allowed exactly where the grammar is complete (the first is the main one).
    pub fn new(words: Vec<Vec<u8>>, stops: &[u32]) -> Result<Vocabulary, String> {
        let n = words.len();
        if stops.is_empty() || stops.iter().any(|&s| s as usize >= n) {
            return Err(format!("end tokens {stops:?} must be a non-empty list of ids below {n}"));
        }
        let info = TokRxInfo::new(n as u32, stops[0]);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(stops);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Vocabulary { factory, compiled: Mutex::default(), seeds: (RandomState::new(), RandomState::new()) })
    }

    /// A vocabulary read from a Hugging Face `tokenizer.json` (byte-level or
    /// byte-fallback BPE), padded with empty tokens to `vocab_size` (models often
    /// have more embedding rows than tokens).
    pub fn from_tokenizer_json(json: &str, vocab_size: usize, stops: &[u32]) -> Result<Vocabulary, String> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("tokenizer JSON: {e}"))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&value).map_err(|e| e.to_string())?;
        if words.len() > vocab_size {
            return Err(format!("the tokenizer has {} tokens, the model {vocab_size}", words.len()));
        }
        words.resize(vocab_size, Vec::new());
        Vocabulary::new(words, stops)
    }

    pub fn vocab_size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    /// The grammar `source` of `kind`, compiled once and then kept (up to
    /// `COMPILED_KEPT` of them). A grammar llguidance cannot compile, or one
    /// that uses something it does not support, is an Err saying why.
    pub fn compile(&self, kind: Kind, source: &str) -> Result<Arc<Grammar>, String> {
        let key = (kind, self.seeds.0.hash_one(source), self.seeds.1.hash_one(source));
        if let Some(g) = self.lock().touch(&key) {
            return Ok(g);
        }
        // Compiled outside the lock: another request's grammar need not wait for this one.
        let grammar = Arc::new(self.compile_uncached(kind, source)?);
        if source.len() > KEPT_SOURCE_BYTES {
            return Ok(grammar);
        }
        let mut compiled = self.lock();
        compiled.by_source.insert(key, grammar.clone());
        compiled.order.retain(|k| k != &key);
        compiled.order.push_back(key);
        while compiled.order.len() > COMPILED_KEPT {
            if let Some(old) = compiled.order.pop_front() {
                compiled.by_source.remove(&old);
            }
        }
        Ok(grammar)
    }

    /// How many compiled grammars are kept now.
    pub fn compiled_count(&self) -> usize {
        self.lock().by_source.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Compiled> {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compile_uncached(&self, kind: Kind, source: &str) -> Result<Grammar, String> {
        let top = match kind {
            Kind::JsonSchema => {
                let schema = serde_json::from_str(source).map_err(|e| format!("the schema is not valid JSON: {e}"))?;
                TopLevelGrammar::from_json_schema(schema)
            }
            Kind::Regex => TopLevelGrammar::from_regex(source),
            Kind::Lark => TopLevelGrammar::from_lark(source.to_string()),
        };
        let parser = self.factory.create_parser(top).map_err(|e| first_line(&e.to_string()))?;
        let start = Matcher::new(Ok(parser));
        if let Some(e) = start.get_error() {
            return Err(first_line(&e));
        }
        let end = self.factory.tok_env().tok_trie().eos_token_set();
        Ok(Grammar { start, end })
    }
}

/// llguidance's errors can go on with the parser's state and the grammar; the
/// first line says what went wrong, unless it ends in ':' (a regex error: the
/// pattern, a caret under the fault, then the reason), when the lines after it
/// up to a blank one say it, joined on one line.
fn first_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim);
    let first = lines.next().unwrap_or("").to_string();
    if !first.ends_with(':') {
        return first;
    }
    let rest: Vec<&str> = lines.take_while(|l| !l.is_empty()).take(4).collect();
    format!("{first} {}", rest.join(" "))
}

impl Compiled {
    fn touch(&mut self, key: &Key) -> Option<Arc<Grammar>> {
        let g = self.by_source.get(key)?.clone();
        if let Some(i) = self.order.iter().position(|k| k == key) {
            let k = self.order.remove(i).expect("position is in range");
            self.order.push_back(k);
        }
        Some(g)
    }
}

/// A compiled grammar: the matcher at its start, which each sequence copies.
pub struct Grammar {
    start: Matcher,
    /// The end tokens, the only ones allowed once the grammar is complete.
    end: SimpleVob,
}

impl Grammar {
    /// A sequence's own position in this grammar, at its start.
    pub fn constraint(&self) -> Constraint {
        let matcher = self.start.deep_clone();
        Constraint { matcher, mask: SimpleVob::alloc(self.end.len()), end: self.end.clone(), error: None }
    }
}

/// One sequence's position in its grammar, and the mask for its next token.
pub struct Constraint {
    matcher: Matcher,
    mask: SimpleVob,
    end: SimpleVob,
    /// Set when the matcher fails (a bug, or a token outside the mask): the
    /// sequence should end, and its request fail, with this message.
    error: Option<String>,
}

impl Constraint {
    /// Computes the tokens allowed next (only the end tokens once the grammar is
    /// complete). On a failure the mask is the end tokens, and `error` says why.
    pub fn compute_mask(&mut self) {
        if self.error.is_some() {
            self.mask = self.end_tokens();
            return;
        }
        match self.matcher.compute_mask_or_eos() {
            Ok(mask) if !mask.is_zero() => self.mask = mask,
            result => {
                if self.error.is_none() {
                    self.error = Some(match result {
                        Err(e) => first_line(&e.to_string()),
                        Ok(_) => "the grammar allows no token here".to_string(),
                    });
                }
                self.mask = self.end_tokens();
            }
        }
    }

    fn end_tokens(&self) -> SimpleVob {
        self.end.clone()
    }

    /// The allowed tokens as a bitset: bit `t % 32` of word `t / 32` is set when token t is allowed.
    pub fn allowed(&self) -> &[u32] {
        self.mask.as_slice()
    }

    pub fn is_allowed(&self, token: u32) -> bool {
        (token as usize) < self.mask.len() && self.mask.is_allowed(token)
    }

    /// Advances by the sampled token.
    pub fn commit(&mut self, token: u32) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.matcher.consume_token(token) {
            self.error = Some(first_line(&e.to_string()));
        }
    }

    /// Whether the grammar is complete: nothing but an end token can follow.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built vocabulary: every ASCII byte as a token, some multi-byte
    /// tokens, two special tokens (one of them the end of an output).
    fn vocabulary() -> (Vocabulary, HashMap<&'static str, u32>) {
        let mut words: Vec<Vec<u8>> = (0u8..128).map(|b| vec![b]).collect();
        let extra = ["{\"", "\":", "true", "false", "null", "ab", "abc", "12", "\"}", "<|end|>", "<|tool|>"];
        let mut ids = HashMap::new();
        for w in extra {
            ids.insert(w, words.len() as u32);
            let special = w.starts_with("<|");
            words.push([if special { &[0xFF][..] } else { &[] }, w.as_bytes()].concat());
        }
        words.push(Vec::new()); // an id that stands for nothing (padding)
        let end = ids["<|end|>"];
        (Vocabulary::new(words, &[end]).unwrap(), ids)
    }

    fn allowed(c: &Constraint, n: usize) -> Vec<u32> {
        (0..n as u32).filter(|&t| c.is_allowed(t)).collect()
    }

    /// Drives a constraint with tokens, checking each is allowed first.
    fn feed(c: &mut Constraint, tokens: &[u32]) {
        for &t in tokens {
            c.compute_mask();
            assert!(c.is_allowed(t), "token {t} refused");
            c.commit(t);
            assert_eq!(c.error(), None);
        }
        c.compute_mask();
    }

    #[test]
    fn regex_mask_allows_exactly_the_continuations() {
        let (v, ids) = vocabulary();
        let n = v.vocab_size();
        let g = v.compile(Kind::Regex, "ab(c|d)").unwrap();
        let mut c = g.constraint();
        c.compute_mask();
        // "a", "ab" and "abc" start a match; nothing else does.
        assert_eq!(allowed(&c, n), vec![b'a' as u32, ids["ab"], ids["abc"]]);
        feed(&mut c, &[ids["ab"]]);
        assert_eq!(allowed(&c, n), vec![b'c' as u32, b'd' as u32]);
        feed(&mut c, &[b'd' as u32]);
        // Complete: only the end token.
        assert!(c.is_complete() || allowed(&c, n) == vec![ids["<|end|>"]]);
        assert_eq!(allowed(&c, n), vec![ids["<|end|>"]]);
    }

    #[test]
    fn special_and_empty_tokens_are_never_allowed_inside_text() {
        let (v, ids) = vocabulary();
        let n = v.vocab_size();
        let g = v.compile(Kind::Regex, "[a-z<|>]*").unwrap();
        let mut c = g.constraint();
        c.compute_mask();
        let a = allowed(&c, n);
        assert!(!a.contains(&ids["<|tool|>"]));
        assert!(!a.contains(&((n - 1) as u32)), "the padding id");
        // The grammar accepts the empty string: the end token is allowed at once.
        assert!(a.contains(&ids["<|end|>"]));
        assert!(a.contains(&(b'<' as u32)));
    }

    #[test]
    fn json_schema_forces_the_shape() {
        let (v, ids) = vocabulary();
        let n = v.vocab_size();
        let schema = r#"{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"],
                         "additionalProperties":false,"x-guidance":{"whitespace_flexible":false}}"#;
        let g = v.compile(Kind::JsonSchema, schema).unwrap();
        let mut c = g.constraint();
        c.compute_mask();
        assert_eq!(allowed(&c, n), vec![b'{' as u32, ids["{\""]]);
        feed(&mut c, &[ids["{\""], b'o' as u32, b'k' as u32, ids["\":"]]);
        assert_eq!(allowed(&c, n), vec![b'f' as u32, b't' as u32, ids["true"], ids["false"]]);
        feed(&mut c, &[ids["false"], b'}' as u32]);
        assert_eq!(allowed(&c, n), vec![ids["<|end|>"]]);
    }

    #[test]
    fn a_token_outside_the_mask_is_an_error_not_a_panic() {
        let (v, _) = vocabulary();
        let g = v.compile(Kind::Regex, "a+").unwrap();
        let mut c = g.constraint();
        c.compute_mask();
        c.commit(b'z' as u32);
        assert!(c.error().is_some());
        c.compute_mask();
        assert_eq!(allowed(&c, v.vocab_size()), vec![v.vocab_size() as u32 - 3], "only the end token");
    }

    #[test]
    fn constraints_of_one_grammar_are_independent() {
        let (v, ids) = vocabulary();
        let g = v.compile(Kind::Regex, "(ab|12)x").unwrap();
        let (mut a, mut b) = (g.constraint(), g.constraint());
        feed(&mut a, &[ids["ab"]]);
        feed(&mut b, &[ids["12"]]);
        assert!(a.is_allowed(b'x' as u32) && b.is_allowed(b'x' as u32));
        let mut fresh = g.constraint();
        fresh.compute_mask();
        assert!(!fresh.is_allowed(b'x' as u32));
    }

    #[test]
    fn bad_grammars_are_errors_that_say_why() {
        let (v, _) = vocabulary();
        assert!(v.compile(Kind::JsonSchema, "{not json").err().unwrap().contains("not valid JSON"));
        let e = v.compile(Kind::JsonSchema, r#"{"type":"array","uniqueItems":true}"#);
        assert!(e.is_err(), "an unknown keyword is refused, not ignored");
        assert!(v.compile(Kind::Lark, "start: undefined_rule").is_err());
        let e = v.compile(Kind::Regex, "(?<=a)b").err().unwrap();
        assert!(e.contains("look-around") || e.contains("look-behind"), "the reason, not only 'regex parse error:': {e}");
        assert!(Kind::parse("gbnf").is_err());
    }

    #[test]
    fn a_byte_fallback_vocabulary_reads_pieces_and_bytes() {
        // SentencePiece-style, as Llama 2's tokenizer.json: '▁' stands for a space, <0xNN> for a byte.
        let json = r#"{
            "added_tokens": [{"id": 0, "content": "<s>", "special": true}, {"id": 1, "content": "</s>", "special": true}],
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"vocab": {"<s>": 0, "</s>": 1, "<0xC3>": 2, "<0xA9>": 3, "\u2581a": 4, "\u00e9": 5, "a": 6, "b": 7}}
        }"#;
        let v = Vocabulary::from_tokenizer_json(json, 10, &[1]).unwrap();
        assert_eq!(v.vocab_size(), 10, "padded to the model's rows");
        let mut c = v.compile(Kind::Regex, "( a|a)\u{e9}").unwrap().constraint();
        c.compute_mask();
        assert_eq!(allowed(&c, 10), vec![4, 6], "'\u{2581}a' is ' a'");
        feed(&mut c, &[6]);
        assert_eq!(allowed(&c, 10), vec![2, 5], "'\u{e9}' whole, or its first byte");
        feed(&mut c, &[2]);
        assert_eq!(allowed(&c, 10), vec![3]);
        feed(&mut c, &[3]);
        assert_eq!(allowed(&c, 10), vec![1], "then only </s>");
    }

    #[test]
    fn compiled_grammars_are_kept_by_source() {
        let (v, _) = vocabulary();
        let a = v.compile(Kind::Regex, "a+").unwrap();
        let b = v.compile(Kind::Regex, "a+").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &v.compile(Kind::Lark, "start: /a+/").unwrap()));
        for i in 0..COMPILED_KEPT + 5 {
            v.compile(Kind::Regex, &format!("x{{{i}}}")).unwrap();
        }
        assert_eq!(v.compiled_count(), COMPILED_KEPT);
        assert!(!Arc::ptr_eq(&a, &v.compile(Kind::Regex, "a+").unwrap()), "the oldest went first");
        let huge = format!("x|{}", "ab".repeat(KEPT_SOURCE_BYTES));
        let (h1, h2) = (v.compile(Kind::Regex, &huge).unwrap(), v.compile(Kind::Regex, &huge).unwrap());
        assert!(!Arc::ptr_eq(&h1, &h2), "a huge source is compiled each time, not kept");
    }
}
