//! `GET /v1/models`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

impl ModelList {
    pub fn new(data: Vec<ModelObject>) -> Self {
        ModelList {
            object: "list".into(),
            data,
        }
    }
}

impl ModelObject {
    pub fn new(id: impl Into<String>, created: u64, owned_by: impl Into<String>) -> Self {
        ModelObject {
            id: id.into(),
            object: "model".into(),
            created,
            owned_by: owned_by.into(),
        }
    }
}
