//! `DescribeTasks` (eds-aic 2023-09-30): its parameters, as `alibabacloud_eds_aic20230930`'s
//! `DescribeTasksRequest` sends them, into a [`DescribeTasksQuery`]. `TaskStatus` and
//! `TaskStatuses.N` are one filter (likewise `TaskType`/`TaskTypes.N`); `MaxResults` is 1–100
//! (default 10); `Level` 1 (batch) or 2 (per instance). ferry's instances have no names and
//! its tasks no `Param`, so `InstanceName` and `Param` are refused rather than ignored (a
//! filter silently dropped would answer with the wrong rows).

use super::errors::invalid;
use super::params::Params;
use crate::controller::model::{ApiError, DescribeTasksQuery};

pub const ACTION: &str = "DescribeTasks";
pub const DEFAULT_MAX_RESULTS: u32 = 10;

pub fn parse(mut p: Params) -> Result<DescribeTasksQuery, ApiError> {
    for unsupported in ["InstanceName", "Param"] {
        if p.optional(unsupported).is_some() {
            return Err(invalid(
                unsupported,
                "ferry's controller does not filter on it (instances have no names, tasks no Param)",
            ));
        }
    }
    let mut task_statuses = p.optional("TaskStatus").into_iter().collect::<Vec<_>>();
    task_statuses.extend(p.list("TaskStatuses")?);
    let mut task_types = p.optional("TaskType").into_iter().collect::<Vec<_>>();
    task_types.extend(p.list("TaskTypes")?);
    let level = p.integer("Level", 1..=2)?.map(|n| n as u8);
    let query = DescribeTasksQuery {
        task_ids: p.list("TaskIds")?,
        parent_task_id: p.optional("ParentTaskId"),
        instance_id: p.optional("InstanceId"),
        task_statuses,
        task_types,
        level,
        invoke_id: p.optional("InvokeId"),
        max_results: p
            .integer("MaxResults", 1..=100)?
            .unwrap_or(DEFAULT_MAX_RESULTS),
        next_token: p.optional("NextToken"),
        resource_ids: p.list("ResourceIds")?,
    };
    p.finish(ACTION)?;
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_pairs(pairs: &[(&str, &str)]) -> Result<DescribeTasksQuery, ApiError> {
        parse(
            Params::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap(),
        )
    }

    #[test]
    fn every_filter_is_read() {
        let q = parse_pairs(&[
            ("TaskIds.1", "t-1"),
            ("TaskIds.2", "t-2"),
            ("ParentTaskId", "t-p"),
            ("InstanceId", "acp-1"),
            ("TaskStatus", "RUNNING"),
            ("TaskStatuses.1", "FINISHED"),
            ("TaskType", "SendFile"),
            ("TaskTypes.1", "SendFile"),
            ("Level", "2"),
            ("InvokeId", "RID"),
            ("MaxResults", "100"),
            ("NextToken", "abc"),
            ("ResourceIds.1", "acp-1"),
        ])
        .unwrap();
        assert_eq!(q.task_ids, ["t-1", "t-2"]);
        assert_eq!(q.parent_task_id.as_deref(), Some("t-p"));
        assert_eq!(q.instance_id.as_deref(), Some("acp-1"));
        assert_eq!(q.task_statuses, ["RUNNING", "FINISHED"]);
        assert_eq!(q.task_types, ["SendFile", "SendFile"]);
        assert_eq!(q.level, Some(2));
        assert_eq!(q.invoke_id.as_deref(), Some("RID"));
        assert_eq!(q.max_results, 100);
        assert_eq!(q.next_token.as_deref(), Some("abc"));
        assert_eq!(q.resource_ids, ["acp-1"]);
    }

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(parse_pairs(&[]).unwrap().max_results, 10);
        for bad in [
            ("MaxResults", "0"),
            ("MaxResults", "101"),
            ("Level", "3"),
            ("Level", "x"),
        ] {
            assert_eq!(
                parse_pairs(&[bad]).unwrap_err().code,
                "InvalidParameter",
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_pairs(&[("InstanceName", "x")]).unwrap_err().code,
            "InvalidParameter"
        );
        assert_eq!(
            parse_pairs(&[("Foo", "x")]).unwrap_err().code,
            "UnsupportedParameter"
        );
    }
}
