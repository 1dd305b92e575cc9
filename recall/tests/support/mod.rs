//! Test helpers: a deterministic stand-in for an embedding model, a token counter, a corpus with known facts,
//! and a minimal PDF writer.

#![allow(dead_code)]

use shoal_recall::{chunk_text, ChunkConfig, ChunkText, DocumentRecord};

/// Dimension of the test embeddings.
pub const DIM: usize = 64;
/// Dimensions given to concepts; the rest hash words.
const CONCEPT_DIMS: usize = 40;

/// Synonym sets, English and Chinese: a text's embedding counts the concepts it mentions, so a paraphrase that
/// shares no word with a chunk but names the same concepts lands next to it, as with a real embedding model.
const CONCEPTS: &[&[&str]] = &[
    &["eiffel", "埃菲尔"],
    &["tower", "landmark", "铁塔"],
    &["completed", "finish", "construct", "built", "建成", "竣工"],
    &["tall", "high", "height", "metres", "高度", "多高"],
    &["world's fair", "exposition", "世博会"],
    &["photosynthesis", "光合作用"],
    &["sunlight", "light", "阳光", "光能"],
    &["energy", "能量"],
    &["plant", "植物"],
    &["chlorophyll", "pigment", "叶绿素"],
    &["长城", "great wall"],
    &["长度", "公里", "多长", "long", "length", "kilometre"],
    &["始建", "origin", "first built", "春秋"],
    &["熊猫", "panda"],
    &["竹", "bamboo"],
    &["吃", "食物", "eat", "diet", "food"],
    &["四川", "sichuan"],
    &["山区", "mountain"],
    &["raft", "consensus", "共识"],
    &["coordinator", "协调"],
    &["网格", "mesh"],
    &["designed", "engineer", "设计"],
    &["paris", "巴黎", "french capital"],
    &["repaint", "paint", "油漆"],
];

/// A deterministic embedding: concept counts, plus a light hash of the words so unrelated texts differ.
pub fn embed(text: &str) -> Vec<f32> {
    let lower = text.to_lowercase();
    let mut v = vec![0.0f32; DIM];
    for (i, synonyms) in CONCEPTS.iter().enumerate() {
        let dim = i % CONCEPT_DIMS;
        v[dim] += synonyms.iter().map(|s| lower.matches(s).count() as f32).sum::<f32>();
    }
    for word in lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in word.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        v[CONCEPT_DIMS + (h % (DIM - CONCEPT_DIMS) as u64) as usize] += 0.15;
    }
    v[DIM - 1] += 0.01;
    v
}

/// Tokens as a small multilingual model would count them, roughly: one per Latin word, one per CJK character.
pub fn count_tokens(text: &str) -> usize {
    let cjk = text.chars().filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c)).count();
    let words = text.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).count();
    cjk + words
}

/// A known document: id, title, source, tags, text.
pub struct Fixture {
    pub doc_id: &'static str,
    pub title: &'static str,
    pub source: &'static str,
    pub tags: &'static [&'static str],
    pub text: &'static str,
}

pub const CORPUS: &[Fixture] = &[
    Fixture {
        doc_id: "eiffel",
        title: "The Eiffel Tower",
        source: "eiffel.md",
        tags: &["travel", "en"],
        text: "The Eiffel Tower stands in Paris on the Champ de Mars.\n\n\
               Its construction was completed in 1889 for the World's Fair. Gustave Eiffel's company designed it.\n\n\
               The tower is 330 metres tall, the tallest structure in the city.",
    },
    Fixture {
        doc_id: "photosynthesis",
        title: "Photosynthesis",
        source: "biology.html",
        tags: &["science", "en"],
        text: "Photosynthesis lets plants turn sunlight into chemical energy stored in sugar.\n\n\
               Chlorophyll absorbs mostly blue and red light and reflects green light.",
    },
    Fixture {
        doc_id: "greatwall",
        title: "长城",
        source: "history.pdf",
        tags: &["history", "zh"],
        text: "长城是中国古代的军事防御工程，绵延在北方的山脊上。\n\n\
               长城的总长度超过两万一千公里。\n\n\
               长城始建于春秋战国时期，明朝时大规模重修。",
    },
    Fixture {
        doc_id: "panda",
        title: "大熊猫",
        source: "animals.md",
        tags: &["science", "zh"],
        text: "大熊猫主要生活在四川的山区。\n\n它们每天要吃十几公斤的竹子，几乎只吃竹。\n\n大熊猫是中国的国宝。",
    },
    Fixture {
        doc_id: "shoal",
        title: "Shoal",
        source: "README.md",
        tags: &["software", "en", "zh"],
        text: "Shoal 是一个 AI 服务网格，在多台机器上运行模型。\n\n\
               The coordinator uses raft for consensus, so losing one coordinator does not stop serving.",
    },
];

/// Chunking used by the tests: small chunks so that each fact sits in its own.
pub fn chunk_config() -> ChunkConfig {
    ChunkConfig { max_tokens: 24, overlap_tokens: 0 }
}

/// The fixture's record and embedded chunks.
pub fn prepare(f: &Fixture) -> (DocumentRecord, Vec<(ChunkText, Vec<f32>)>) {
    prepare_text(f, f.text)
}

/// Like [`prepare`] with another text.
pub fn prepare_text(f: &Fixture, text: &str) -> (DocumentRecord, Vec<(ChunkText, Vec<f32>)>) {
    let mut record = DocumentRecord::new(f.doc_id);
    record.title = Some(f.title.to_string());
    record.source = Some(f.source.to_string());
    record.tags = f.tags.iter().map(|t| t.to_string()).collect();
    record.metadata.insert("lang".into(), if f.tags.contains(&"zh") { "zh" } else { "en" }.into());
    let chunks = chunk_text(text, &chunk_config(), &count_tokens).expect("chunk");
    let embedded = chunks.into_iter().map(|c| {
        let v = embed(&c.text);
        (c, v)
    });
    (record, embedded.collect())
}

pub mod pdf;
