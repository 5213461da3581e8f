//! Speech to text (Whisper), beside the language models: audio in as apps
//! send it, the reader of CTranslate2's model files that carry Whisper's
//! weights, the log-mel front end and the audio encoder.

pub mod audio;
pub mod ct2;
pub mod encoder;
pub mod mel;
