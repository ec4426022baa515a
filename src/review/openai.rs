//! OpenAI-compatible chat completions: `POST {base_url}/chat/completions`, with
//! `Authorization: Bearer` when a key is configured. The answer is constrained by
//! `response_format: {type: "json_schema", json_schema: {name, strict: true, schema}}`, which
//! OpenAI, Ollama, vLLM, LM Studio and llama.cpp's server all accept.

use serde_json::{Value, json};

use super::prompt::{ANSWER_NAME, Prompt, answer_schema, parse_answer_text};
use super::{Answer, ReviewError};

pub fn request_body(model: &str, prompt: &Prompt) -> Value {
    json!({
        "model": model,
        "messages": [
            { "role": "system", "content": prompt.system },
            { "role": "user", "content": prompt.user },
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": { "name": ANSWER_NAME, "strict": true, "schema": answer_schema() },
        },
    })
}

/// Reads the review from a chat-completions response.
pub fn read_answer(response: &Value) -> Result<Answer, ReviewError> {
    let choice = response
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| ReviewError::Unparseable("the response has no choices".into()))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        return Err(ReviewError::Refused(refusal.chars().take(300).collect()));
    }
    if choice.get("finish_reason").and_then(Value::as_str) == Some("content_filter") {
        return Err(ReviewError::Refused("finish_reason content_filter".into()));
    }
    let content = message
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| ReviewError::Unparseable("the message has no text content".into()))?;
    parse_answer_text(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::ReviewDecision;

    fn with(message: Value, finish: &str) -> Value {
        json!({"choices": [{"index": 0, "message": message, "finish_reason": finish}]})
    }

    #[test]
    fn reads_the_json_content() {
        let content = r#"{"decision":"escalate","confidence":0.4,"reasoning":"unclear"}"#;
        let ok = with(json!({"role": "assistant", "content": content, "refusal": null}), "stop");
        assert_eq!(read_answer(&ok).unwrap().decision, ReviewDecision::Escalate);
        let refused = with(json!({"role": "assistant", "content": null, "refusal": "I can't help"}), "stop");
        assert_eq!(read_answer(&refused), Err(ReviewError::Refused("I can't help".into())));
        let filtered = with(json!({"role": "assistant", "content": ""}), "content_filter");
        assert!(matches!(read_answer(&filtered), Err(ReviewError::Refused(_))));
        let prose = with(json!({"role": "assistant", "content": "Sure, approve."}), "stop");
        assert!(matches!(read_answer(&prose), Err(ReviewError::Unparseable(_))));
        assert!(matches!(read_answer(&json!({"error": "x"})), Err(ReviewError::Unparseable(_))));
    }
}
