//! Prompt vocabulary: common English words, lowercase ASCII letters only, each of which is a
//! single token (with its leading space) in the BPE tokenizers of the common open model
//! families and in the mock engine's tokenizer. A prompt of N of them is therefore about N
//! tokens long on any target, which is what "input length" can honestly promise without
//! the target's tokenizer at hand.

#[rustfmt::skip]
pub(crate) const WORDS: &[&str] = &[
    "time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child", "world",
    "school", "state", "family", "group", "country", "problem", "hand", "part", "place", "case",
    "week", "company", "system", "program", "question", "work", "number", "night", "point",
    "home", "water", "room", "mother", "area", "money", "story", "fact", "month", "lot",
    "right", "study", "book", "eye", "job", "word", "business", "issue", "side", "kind", "head",
    "house", "service", "friend", "father", "power", "hour", "game", "line", "end", "member",
    "law", "car", "city", "name", "team", "minute", "idea", "body", "back", "parent", "face",
    "others", "level", "office", "door", "health", "person", "art", "war", "history", "party",
    "result", "change", "morning", "reason", "research", "girl", "guy", "moment", "air",
    "teacher", "force", "order", "good", "new", "first", "last", "long", "great", "little",
    "own", "other", "old", "big", "high", "different", "small", "large", "next", "early",
    "young", "important", "few", "public", "bad", "same", "able", "late", "hard", "best",
    "better", "sure", "free", "true", "full", "special", "easy", "clear", "recent", "open",
    "red", "short", "single", "current", "wrong", "private", "past", "fine", "common", "poor",
    "natural", "similar", "hot", "dead", "central", "happy", "serious", "ready", "simple",
    "left", "general", "blue", "dark", "entire", "close", "legal", "cold", "final", "main",
    "green", "nice", "huge", "popular", "be", "have", "do", "say", "go", "get", "make", "know",
    "think", "take", "see", "come", "want", "look", "use", "find", "give", "tell", "call",
    "try", "ask", "need", "feel", "become", "leave", "put", "mean", "keep", "let", "begin",
    "seem", "help", "talk", "turn", "start", "show", "hear", "play", "run", "move", "like",
    "live", "believe", "hold", "bring", "happen", "write", "provide", "sit", "stand", "lose",
    "pay", "meet", "include", "continue", "set", "learn", "lead", "understand", "watch",
    "follow", "stop", "create", "speak", "read", "allow", "add", "spend", "grow", "offer",
    "remember", "love", "consider", "appear", "buy", "wait", "serve", "die", "send", "expect",
    "build", "stay", "fall", "cut", "reach", "kill", "remain", "the", "of", "and", "to", "in",
    "for", "on", "with", "at", "by", "from", "up", "about", "into", "over", "after", "under",
    "again", "then", "once", "here", "there", "when", "where", "why", "how", "all", "any",
    "both", "each", "more", "most", "some", "such", "only", "than", "too", "very", "just",
    "now", "also", "well", "even", "still", "never", "always", "often",
];

#[cfg(test)]
mod tests {
    use super::WORDS;

    #[test]
    fn words_are_plain_lowercase_ascii() {
        assert!(WORDS.len() >= 256);
        assert!(WORDS
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())));
    }
}
