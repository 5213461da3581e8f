//! Speech to text (Whisper), beside the language models: the reader of
//! CTranslate2's model files that carry Whisper's weights.

pub mod ct2;
