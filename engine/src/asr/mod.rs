//! Speech to text (Whisper), beside the language models: audio in as apps
//! send it, the reader of CTranslate2's model files that carry Whisper's
//! weights, the log-mel front end, the audio encoder, the text decoder and
//! greedy transcription of one 30 s window.

pub mod audio;
pub mod ct2;
pub mod decoder;
pub mod encoder;
mod layers;
pub mod mel;
pub mod whisper;
