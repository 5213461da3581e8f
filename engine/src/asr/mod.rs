//! Speech to text (Whisper), beside the language models: audio in as apps
//! send it, the reader of CTranslate2's model files that carry Whisper's
//! weights, and the log-mel front end.

pub mod audio;
pub mod ct2;
pub mod mel;
