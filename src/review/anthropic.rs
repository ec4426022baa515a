//! Anthropic's Messages API: `POST {base_url}/v1/messages` with `x-api-key` and
//! `anthropic-version`. The answer is forced through a single tool (`tool_choice`), whose input
//! is the review.

use serde_json::{Value, json};

use super::prompt::{ANSWER_NAME, Prompt, answer_schema, parse_answer};
use super::{Answer, ReviewError};

/// The `anthropic-version` header sent.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` of a review: the answer is a short JSON object.
pub const MAX_TOKENS: u32 = 1024;

pub fn request_body(model: &str, prompt: &Prompt) -> Value {
    json!({
        "model": model,
        "max_tokens": MAX_TOKENS,
        "system": prompt.system,
        "messages": [{ "role": "user", "content": prompt.user }],
        "tools": [{
            "name": ANSWER_NAME,
            "description": "Record your review of the tool call: decision, confidence and reasoning.",
            "input_schema": answer_schema(),
        }],
        "tool_choice": { "type": "tool", "name": ANSWER_NAME },
    })
}

/// Reads the review from a Messages API response.
pub fn read_answer(response: &Value) -> Result<Answer, ReviewError> {
    if response.get("stop_reason").and_then(Value::as_str) == Some("refusal") {
        let text = response
            .get("content")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find_map(|b| b.get("text").and_then(Value::as_str)))
            .unwrap_or("stop_reason refusal");
        return Err(ReviewError::Refused(text.chars().take(300).collect()));
    }
    let content = response
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ReviewError::Unparseable("the response has no content".into()))?;
    let mut calls = content.iter().filter(|b| {
        b.get("type").and_then(Value::as_str) == Some("tool_use")
            && b.get("name").and_then(Value::as_str) == Some(ANSWER_NAME)
    });
    match (calls.next(), calls.next()) {
        (Some(call), None) => {
            let input =
                call.get("input").ok_or_else(|| ReviewError::Unparseable("the tool call has no input".into()))?;
            parse_answer(input)
        }
        (None, _) => Err(ReviewError::Unparseable(format!("the response has no {ANSWER_NAME} tool call"))),
        (Some(_), Some(_)) => Err(ReviewError::Unparseable(format!("the response has several {ANSWER_NAME} calls"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::ReviewDecision;

    #[test]
    fn reads_the_forced_tool_call() {
        let ok = json!({
            "type": "message",
            "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "t", "name": ANSWER_NAME,
                         "input": {"decision": "approve", "confidence": 0.9, "reasoning": "read only"}}]
        });
        assert_eq!(read_answer(&ok).unwrap().decision, ReviewDecision::Approve);
        let refusal = json!({"stop_reason": "refusal", "content": []});
        assert!(matches!(read_answer(&refusal), Err(ReviewError::Refused(_))));
        let text_only = json!({"stop_reason": "end_turn", "content": [{"type": "text", "text": "approve"}]});
        assert!(matches!(read_answer(&text_only), Err(ReviewError::Unparseable(_))));
        let bad_input = json!({"content": [{"type": "tool_use", "name": ANSWER_NAME, "input": {"decision": "yes"}}]});
        assert!(matches!(read_answer(&bad_input), Err(ReviewError::Unparseable(_))));
    }
}
